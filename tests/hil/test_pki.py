"""The test PKI: files, modes, names, chains, validity."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil.pki import (
    PkiError,
    generate_foreign_client,
    generate_pki,
    issue_client,
    issue_expired_client,
)

NOW = dt.datetime(2025, 1, 15, 12, 0, tzinfo=dt.UTC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_files_names_and_key_modes(tmp_path: Path) -> None:
    pki = generate_pki(tmp_path / "pki", gateway_ids=("gateway-01", "gateway-02"), now=NOW)
    names = sorted(p.name for p in pki.directory.iterdir())
    assert names == sorted(
        [
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "headend.crt",
            "headend.key",
            "gateway-01.crt",
            "gateway-01.key",
            "gateway-02.crt",
            "gateway-02.key",
        ]
    )
    for p in pki.directory.glob("*.key"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    assert pki.client("gateway-02").cert.name == "gateway-02.crt"
    with pytest.raises(KeyError, match="gateway-01"):
        pki.client("gateway-99")


def test_key_mode_is_0600_even_over_a_world_readable_file(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    (d / "gateway-01.key").write_text("old")
    (d / "gateway-01.key").chmod(0o644)
    pki = generate_pki(d, now=NOW)
    assert stat.S_IMODE(pki.client("gateway-01").key.stat().st_mode) == 0o600


def test_chain_names_sans_and_usages(tmp_path: Path) -> None:
    pki = generate_pki(tmp_path, now=NOW, valid_days=30)
    ca = load(pki.ca_cert)
    server = load(pki.server.cert)
    gw = load(pki.client("gateway-01").cert)
    he = load(pki.headend.cert)
    for c in (server, gw, he):
        c.verify_directly_issued_by(ca)
        assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
        assert c.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        assert c.not_valid_after_utc == NOW + dt.timedelta(days=30)
        assert c.not_valid_before_utc < NOW
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cn(gw) == "gateway-01" and cn(he) == "headend"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    eku = gw.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_foreign_ca_and_expired_client(tmp_path: Path) -> None:
    pki = generate_pki(tmp_path / "pki", now=NOW)
    foreign = generate_foreign_client(tmp_path / "foreign", "gateway-01", now=NOW)
    fc = load(foreign.client.cert)
    assert cn(fc) == "gateway-01"
    fc.verify_directly_issued_by(load(foreign.ca.cert))
    with pytest.raises((ValueError, InvalidSignature)):
        fc.verify_directly_issued_by(load(pki.ca_cert))
    expired = issue_expired_client(pki, "gateway-01", now=NOW)
    ec_ = load(expired.cert)
    assert ec_.not_valid_after_utc < NOW
    ec_.verify_directly_issued_by(load(pki.ca_cert))
    assert expired.cert.name == "gateway-01-expired.crt"
    assert stat.S_IMODE(expired.key.stat().st_mode) == 0o600
    custom = issue_client(pki, "gateway-07", not_before=NOW, not_after=NOW + dt.timedelta(days=3))
    assert load(custom.cert).not_valid_after_utc == NOW + dt.timedelta(days=3)


@pytest.mark.parametrize("bad", ["", "a/b", "gw+", "gw#", ".."])
def test_bad_names_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PkiError, match="unusable certificate name"):
        generate_pki(tmp_path, gateway_ids=(bad,))


def test_naive_time_and_clashing_ids_rejected(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="timezone"):
        generate_pki(tmp_path, now=dt.datetime(2025, 1, 1))
    with pytest.raises(PkiError, match="differ"):
        generate_pki(tmp_path, gateway_ids=("headend",))
    with pytest.raises(PkiError, match="differ"):
        generate_pki(tmp_path, gateway_ids=("server",))
