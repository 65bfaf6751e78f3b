"""DLMS/COSEM security suite 0 (AES-128-GCM, 12-byte tags), sans-IO, on ``cryptography``.

gurux-dlms does GCM in pure Python (a secured read measured 16x slower than a plain one), so both
the gateway's session and the emulated meter wrap and unwrap APDUs here, with OpenSSL's AES-GCM.
Layout (Green Book, checked against gurux's GXDLMSChippering):

- ciphered content: ``SC || IC (u32 BE) || ciphertext || tag[:12]``; SC 0x30 authenticated and
  encrypted, 0x10 authenticated only (the APDU travels in clear, the tag covers it);
- IV = the *sender's* system title (8) || IC; AAD = SC || AK (|| the plain APDU when only
  authenticated);
- glo-ciphered services put the content behind their own tag and an A-XDR length
  (get 0xC0 -> 0xC8, response 0xC4 -> 0xCC, set 0xC9/0xCD, action 0xCB/0xCF, event-notification
  0xCA, initiate request/response 0x21/0x28, confirmed-service-error 0x2E); general-glo-ciphering
  (0xDB) also names the sender's system title, and is what a data-notification travels in.
- HLS mechanism 5 (HIGH_GMAC): f(challenge) = 0x10 || IC || GMAC tag over SC || AK || challenge.

Nothing here keeps counters: callers check the returned invocation counter against their store,
because "is this counter fresh" is state, and this module is a pure codec.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SC_AUTHENTICATION = 0x10
SC_ENCRYPTION = 0x20
SC_AUTHENTICATED_ENCRYPTION = 0x30
TAG_LEN = 12
TITLE_LEN = 8
KEY_LEN = 16
GENERAL_GLO_CIPHERING = 0xDB
DATA_NOTIFICATION = 0x0F

# plain xDLMS APDU tag -> its glo-ciphered tag (IEC 62056-5-3).
GLO_TAGS: dict[int, int] = {
    0x01: 0x21,  # initiate-request
    0x08: 0x28,  # initiate-response
    0x0E: 0x2E,  # confirmed-service-error
    0xC0: 0xC8,  # get-request
    0xC1: 0xC9,  # set-request
    0xC2: 0xCA,  # event-notification-request
    0xC3: 0xCB,  # action-request
    0xC4: 0xCC,  # get-response
    0xC5: 0xCD,  # set-response
    0xC7: 0xCF,  # action-response
}
PLAIN_TAGS: dict[int, int] = {v: k for k, v in GLO_TAGS.items()}
CIPHERED_TAGS = frozenset(PLAIN_TAGS) | {GENERAL_GLO_CIPHERING}


class CipheringError(ValueError):
    """A ciphered APDU that cannot be taken apart (short, unknown tag, refused security control).

    ``reason`` is a stable key for counters; the message names what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class AuthenticationFailed(CipheringError):
    """The GCM tag (or an HLS GMAC) does not verify: wrong keys, wrong system title, a tampered
    frame, or a counter the sender did not use. The session reports this as "MAC Fail"."""


@dataclass(frozen=True)
class Unprotected:
    """One deciphered APDU and what its security header said."""

    service: int  # the ciphered tag it arrived under (0xCC, 0xDB, ...)
    system_title: bytes  # the sender's, as used for the IV
    security_control: int
    invocation_counter: int
    apdu: bytes  # the plain xDLMS APDU


def _axdr_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _read_length(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise CipheringError("truncated", f"length expected at offset {pos}")
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4 or pos + 1 + count > len(buf):
        raise CipheringError("bad-length", f"length form 0x{first:02x} at offset {pos}")
    return int.from_bytes(buf[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


class Suite0:
    """One key set (block cipher key EK, authentication key AK) of security suite 0."""

    def __init__(self, block_cipher_key: bytes, authentication_key: bytes) -> None:
        if len(block_cipher_key) != KEY_LEN or len(authentication_key) != KEY_LEN:
            raise ValueError(
                f"suite 0 keys are 16 bytes; got EK {len(block_cipher_key)}, "
                f"AK {len(authentication_key)}"
            )
        self._ek = bytes(block_cipher_key)
        self._ak = bytes(authentication_key)
        self._aead = AESGCM(self._ek)

    @staticmethod
    def _iv(system_title: bytes, ic: int) -> bytes:
        if len(system_title) != TITLE_LEN:
            raise ValueError(f"system title must be 8 bytes, got {len(system_title)}")
        if not 0 <= ic <= 0xFFFFFFFF:
            raise ValueError(f"invocation counter {ic} does not fit 32 bits")
        return bytes(system_title) + struct.pack(">I", ic)

    # ------------------------------------------------------------------ content

    def seal(self, sc: int, system_title: bytes, ic: int, plain: bytes) -> bytes:
        """``SC || IC || body || tag`` for one APDU (SC 0x30 or 0x10)."""
        iv = self._iv(system_title, ic)
        head = bytes([sc]) + struct.pack(">I", ic)
        if sc == SC_AUTHENTICATED_ENCRYPTION:
            out = self._aead.encrypt(iv, plain, bytes([sc]) + self._ak)
            return head + out[: len(plain)] + out[len(plain) : len(plain) + TAG_LEN]
        if sc == SC_AUTHENTICATION:
            tag = self._aead.encrypt(iv, b"", bytes([sc]) + self._ak + plain)[:TAG_LEN]
            return head + plain + tag
        raise ValueError(f"security control 0x{sc:02x}: suite 0 sends 0x30 or 0x10")

    def open(self, system_title: bytes, content: bytes) -> tuple[int, int, bytes]:
        """(SC, IC, plain APDU) of ``SC || IC || body || tag``; the tag must verify."""
        if len(content) < 5 + TAG_LEN:
            raise CipheringError("truncated", f"ciphered content of {len(content)} bytes")
        sc = content[0]
        if sc & 0x0F:
            raise CipheringError(
                "wrong-suite", f"security control 0x{sc:02x} names suite {sc & 15}"
            )
        if sc & 0xC0:
            raise CipheringError(
                "refused-security-control",
                f"security control 0x{sc:02x}: broadcast keys and compression are not used",
            )
        ic = int(struct.unpack_from(">I", content, 1)[0])
        body, tag = content[5:-TAG_LEN], content[-TAG_LEN:]
        iv = self._iv(system_title, ic)
        if sc == SC_AUTHENTICATED_ENCRYPTION:
            dec = Cipher(algorithms.AES(self._ek), modes.GCM(iv, tag, min_tag_length=TAG_LEN))
            d = dec.decryptor()
            d.authenticate_additional_data(bytes([sc]) + self._ak)
            plain = d.update(body)
            try:
                d.finalize()
            except InvalidTag:
                raise AuthenticationFailed(
                    "mac-fail", f"tag of IC {ic} from {system_title.hex()} does not verify"
                ) from None
            return sc, ic, plain
        if sc == SC_AUTHENTICATION:
            want = self._aead.encrypt(iv, b"", bytes([sc]) + self._ak + body)[:TAG_LEN]
            if not hmac.compare_digest(want, tag):
                raise AuthenticationFailed(
                    "mac-fail", f"tag of IC {ic} from {system_title.hex()} does not verify"
                )
            return sc, ic, body
        raise CipheringError(
            "refused-security-control",
            f"security control 0x{sc:02x}: suite 0 here needs authentication (0x10 or 0x30)",
        )

    # ------------------------------------------------------------------ HLS-GMAC

    def gmac(self, system_title: bytes, ic: int, data: bytes) -> bytes:
        """The 12-byte GMAC tag over SC(0x10) || AK || data."""
        iv = self._iv(system_title, ic)
        aad = bytes([SC_AUTHENTICATION]) + self._ak + data
        return self._aead.encrypt(iv, b"", aad)[:TAG_LEN]

    def hls_response(self, system_title: bytes, ic: int, challenge: bytes) -> bytes:
        """f(challenge) = 0x10 || IC || GMAC, computed by the side that *answers* the challenge
        with its own system title and counter."""
        return (
            bytes([SC_AUTHENTICATION])
            + struct.pack(">I", ic)
            + self.gmac(system_title, ic, challenge)
        )

    def verify_hls(self, system_title: bytes, challenge: bytes, response: bytes) -> int:
        """Check the peer's f(challenge); returns the IC it used."""
        if len(response) != 5 + TAG_LEN or response[0] != SC_AUTHENTICATION:
            raise AuthenticationFailed(
                "hls-fail", f"HLS response {response.hex()} is not 0x10 || IC || 12-byte tag"
            )
        ic = int(struct.unpack_from(">I", response, 1)[0])
        if not hmac.compare_digest(self.gmac(system_title, ic, challenge), response[5:]):
            raise AuthenticationFailed(
                "hls-fail", f"HLS GMAC of IC {ic} from {system_title.hex()} does not verify"
            )
        return ic


# ---------------------------------------------------------------------------------- APDUs


def protect(
    suite: Suite0,
    apdu: bytes,
    system_title: bytes,
    ic: int,
    *,
    sc: int = SC_AUTHENTICATED_ENCRYPTION,
    general: bool = False,
) -> bytes:
    """Cipher one plain xDLMS APDU with *our* ``system_title`` and counter ``ic``: the glo-tag of
    its service, or general-glo-ciphering when ``general`` (or for a data-notification)."""
    if not apdu:
        raise ValueError("empty APDU")
    content = suite.seal(sc, system_title, ic, apdu)
    if general or apdu[0] == DATA_NOTIFICATION:
        return (
            bytes([GENERAL_GLO_CIPHERING, TITLE_LEN])
            + bytes(system_title)
            + _axdr_length(len(content))
            + content
        )
    tag = GLO_TAGS.get(apdu[0])
    if tag is None:
        raise ValueError(f"APDU 0x{apdu[0]:02x} has no glo-ciphered form")
    return bytes([tag]) + _axdr_length(len(content)) + content


def unprotect(suite: Suite0, apdu: bytes, peer_system_title: bytes | None) -> Unprotected:
    """Decipher one glo- or general-glo-ciphered APDU from a peer. For glo tags the IV needs the
    peer's system title (from the AARQ/AARE); general-glo-ciphering carries its own, which must
    then equal ``peer_system_title`` when that is known."""
    if not apdu:
        raise CipheringError("truncated", "empty APDU")
    service = apdu[0]
    pos = 1
    if service == GENERAL_GLO_CIPHERING:
        n, pos = _read_length(apdu, pos)
        title = apdu[pos : pos + n]
        pos += n
        if len(title) != TITLE_LEN:
            raise CipheringError("bad-system-title", f"system title of {len(title)} bytes")
        if peer_system_title is not None and title != peer_system_title:
            raise AuthenticationFailed(
                "wrong-system-title",
                f"frame names system title {title.hex()}, peer is {peer_system_title.hex()}",
            )
    elif service in PLAIN_TAGS:
        if peer_system_title is None:
            raise CipheringError(
                "no-system-title", f"glo APDU 0x{service:02x} before the peer's system title"
            )
        title = peer_system_title
    else:
        raise CipheringError("not-ciphered", f"APDU 0x{service:02x} is not a ciphered service")
    n, pos = _read_length(apdu, pos)
    if pos + n != len(apdu):
        raise CipheringError(
            "bad-length", f"ciphered length {n} but {len(apdu) - pos} bytes follow the header"
        )
    sc, ic, plain = suite.open(bytes(title), apdu[pos:])
    if not plain:
        raise CipheringError("empty-apdu", f"IC {ic}: ciphered APDU holds nothing")
    if service in PLAIN_TAGS and plain[0] != PLAIN_TAGS[service]:
        raise CipheringError(
            "service-mismatch",
            f"0x{service:02x} carries APDU 0x{plain[0]:02x}, not 0x{PLAIN_TAGS[service]:02x}",
        )
    return Unprotected(service, bytes(title), sc, ic, plain)


def is_ciphered(apdu: bytes) -> bool:
    return bool(apdu) and apdu[0] in CIPHERED_TAGS
