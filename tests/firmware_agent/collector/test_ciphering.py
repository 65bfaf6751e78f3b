"""Suite 0 ciphering against gurux's own (pure-Python) GCM: byte-identical glo and general-glo
APDUs both ways, authentication-only frames, HLS-GMAC f(challenge), and typed failures."""

from __future__ import annotations

import pytest
from gurux_dlms import GXByteBuffer, GXDLMSSettings
from gurux_dlms.AesGcmParameter import AesGcmParameter
from gurux_dlms.enums import Authentication, Security
from gurux_dlms.GXCiphering import GXCiphering
from gurux_dlms.GXDLMSChippering import GXDLMSChippering
from gurux_dlms.GXSecure import GXSecure
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.collector.ciphering import (
    SC_AUTHENTICATION,
    AuthenticationFailed,
    CipheringError,
    Suite0,
    protect,
    unprotect,
)

EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
TITLE = b"ABCDEFGH"
GET = bytes.fromhex("C001C1000301000108 00FF0200".replace(" ", ""))
SUITE = Suite0(EK, AK)


def gurux_encrypt(tag: int, plain: bytes, ic: int, security: int) -> bytes:
    p = AesGcmParameter(tag, TITLE, EK, AK)
    p.security = security
    p.invocationCounter = ic
    return bytes(GXCiphering.encrypt(p, plain))


def gurux_decrypt(apdu: bytes) -> tuple[bytes, int]:
    s = GXDLMSSettings(False, None)
    s.cipher = GXCiphering(TITLE)
    p = AesGcmParameter(0, TITLE, EK, AK)
    out = GXDLMSChippering.decryptAesGcm(s, p, GXByteBuffer(apdu))
    return bytes(out), int(p.invocationCounter)


def test_glo_get_request_is_byte_identical_to_gurux() -> None:
    ours = protect(SUITE, GET, TITLE, 0x01234567)
    assert ours[0] == 0xC8
    assert ours == gurux_encrypt(0xC8, GET, 0x01234567, Security.AUTHENTICATION_ENCRYPTION)
    assert gurux_decrypt(ours) == (GET, 0x01234567)


def test_authentication_only_is_byte_identical_and_carries_the_apdu_in_clear() -> None:
    ours = protect(SUITE, GET, TITLE, 7, sc=SC_AUTHENTICATION)
    assert GET in ours
    assert ours == gurux_encrypt(0xC8, GET, 7, Security.AUTHENTICATION)
    assert unprotect(SUITE, ours, TITLE).apdu == GET


def test_general_glo_ciphering_names_the_sender() -> None:
    notification = bytes.fromhex("0F0000000100") + bytes([0x09, 0x02, 0xAA, 0xBB])
    ours = protect(SUITE, notification, TITLE, 99)
    assert ours[:10] == b"\xdb\x08" + TITLE
    assert ours == gurux_encrypt(0xDB, notification, 99, Security.AUTHENTICATION_ENCRYPTION)
    u = unprotect(SUITE, ours, None)
    assert (u.system_title, u.invocation_counter, u.apdu) == (TITLE, 99, notification)
    with pytest.raises(AuthenticationFailed, match="wrong-system-title"):
        unprotect(SUITE, ours, b"OTHERSYS")


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.integers(0, 0xFFFFFFFF))
def test_gurux_frames_open_with_ours(body: bytes, ic: int) -> None:
    plain = b"\xc4" + body
    theirs = gurux_encrypt(0xCC, plain, ic, Security.AUTHENTICATION_ENCRYPTION)
    u = unprotect(SUITE, theirs, TITLE)
    assert (u.apdu, u.invocation_counter, u.service, u.security_control) == (plain, ic, 0xCC, 0x30)


def test_a_flipped_bit_or_wrong_key_or_title_is_a_mac_failure() -> None:
    frame = bytearray(protect(SUITE, GET, TITLE, 5))
    for i in (3, 8, len(frame) - 1):
        bad = bytearray(frame)
        bad[i] ^= 0x01
        with pytest.raises(AuthenticationFailed) as err:
            unprotect(SUITE, bytes(bad), TITLE)
        assert err.value.reason == "mac-fail"
    with pytest.raises(AuthenticationFailed):
        unprotect(Suite0(EK, bytes(16)), bytes(frame), TITLE)
    with pytest.raises(AuthenticationFailed):
        unprotect(SUITE, bytes(frame), b"ZZZZZZZZ")


@pytest.mark.parametrize(
    ("apdu", "reason"),
    [
        (b"", "truncated"),
        (b"\xc0\x01", "not-ciphered"),
        (b"\xc8\x05\x30\x00\x00\x00\x01", "truncated"),
        (b"\xc8\x30" + b"\x30" + bytes(20), "bad-length"),
        (b"\xc8\x16" + b"\x31" + bytes(21), "wrong-suite"),
        (b"\xc8\x16" + b"\x70" + bytes(21), "refused-security-control"),
        (b"\xc8\x16" + b"\x20" + bytes(21), "refused-security-control"),
        (b"\xdb\x03abc\x00", "bad-system-title"),
    ],
)
def test_malformed_ciphered_apdus_have_named_reasons(apdu: bytes, reason: str) -> None:
    with pytest.raises(CipheringError) as err:
        unprotect(SUITE, apdu, TITLE)
    assert err.value.reason == reason


def test_service_tag_must_match_the_plain_apdu_inside() -> None:
    forged = b"\xcc" + protect(SUITE, GET, TITLE, 3)[1:]  # a request relabelled as a response
    with pytest.raises(CipheringError, match="service-mismatch"):
        unprotect(SUITE, forged, TITLE)


def test_hls_gmac_matches_gurux_and_verifies() -> None:
    challenge = bytes(range(16))
    gs = GXDLMSSettings(False, None)
    gs.authentication = Authentication.HIGH_GMAC
    gs.cipher = GXCiphering(TITLE)
    gs.cipher.blockCipherKey = EK
    gs.cipher.authenticationKey = AK
    theirs = bytes(GXSecure.secure(gs, gs.cipher, 41, challenge, TITLE))
    assert SUITE.hls_response(TITLE, 41, challenge) == theirs
    assert SUITE.verify_hls(TITLE, challenge, theirs) == 41
    with pytest.raises(AuthenticationFailed, match="hls-fail"):
        SUITE.verify_hls(TITLE, challenge[::-1], theirs)
    with pytest.raises(AuthenticationFailed, match="hls-fail"):
        SUITE.verify_hls(TITLE, challenge, theirs[:-1])


def test_keys_and_counters_are_range_checked() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Suite0(EK[:15], AK)
    with pytest.raises(ValueError, match="32 bits"):
        protect(SUITE, GET, TITLE, 1 << 32)
    with pytest.raises(ValueError, match="no glo-ciphered form"):
        protect(SUITE, b"\x60\x00", TITLE, 1)
