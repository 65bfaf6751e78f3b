"""A throw-away PKI for tests and the demo: one CA, a broker certificate, one client certificate
per gateway and one for the head end, all EC P-256.

Why generate instead of shipping fixtures: certificates expire, and tests of expiry, of a foreign
CA and of hostname checks need certificates made for the moment the test runs. Private keys are
created with mode 0600 from the first byte (``os.open`` with the mode), never chmod-ed afterwards.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_VALID_DAYS = 365
CA_VALID_DAYS = 3650
# Certificates start an hour in the past so a peer whose clock lags a little still accepts them.
BACKDATE = dt.timedelta(hours=1)


class PkiError(Exception):
    """A PKI request that cannot be honoured (bad name, missing CA file)."""


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths of everything ``generate_pki`` wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server: CertPair
    headend: CertPair
    clients: dict[str, CertPair] = field(default_factory=dict)

    @property
    def ca(self) -> CertPair:
        return CertPair(self.ca_cert, self.ca_key)

    def client(self, client_id: str) -> CertPair:
        """The certificate pair of one gateway; a KeyError names the ids that exist."""
        try:
            return self.clients[client_id]
        except KeyError:
            have = sorted(self.clients)
            raise KeyError(f"no client certificate {client_id!r}; have {have}") from None


def _utcnow(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise PkiError("now must be timezone-aware (UTC)")
    return now


def _check_name(name: str) -> None:
    # The name becomes a file name and the CN that mosquitto uses as the MQTT username.
    if not name or "/" in name or name in (".", "..") or any(c in name for c in "+#\0"):
        raise PkiError(f"unusable certificate name {name!r}: no '/', '+', '#' or NUL, not empty")


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a PEM private key that is 0600 from the moment the file exists."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.unlink(missing_ok=True)  # O_CREAT keeps an existing file's mode: start afresh
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _make_ca(
    common_name: str, now: dt.datetime, valid_days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name(common_name, "wisun-gateway test PKI")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    server_names: Sequence[str] = (),
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, "wisun-gateway test PKI"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(_general_names(server_names))), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _general_names(names: Iterable[str]) -> Iterable[x509.GeneralName]:
    for n in names:
        try:
            yield x509.IPAddress(ipaddress.ip_address(n))
        except ValueError:
            yield x509.DNSName(n)


def _save_pair(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    write_private_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise PkiError(f"CA file missing: {e.filename}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{pki.ca_key}: not an EC private key")
    return cert, key


def generate_pki(
    directory: Path,
    *,
    gateway_ids: Sequence[str] = ("gateway-01",),
    headend_id: str = "headend",
    server_names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    now: dt.datetime | None = None,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> Pki:
    """Write ca.crt/.key, server.crt/.key, ``<gateway id>.crt/.key`` per gateway and
    ``headend.crt/.key`` into ``directory`` (created 0700 if missing)."""
    t = _utcnow(now)
    for name in (*gateway_ids, headend_id):
        _check_name(name)
    if headend_id in gateway_ids or {"ca", "server"} & {headend_id, *gateway_ids}:
        raise PkiError("gateway ids, the head-end id, 'ca' and 'server' must all differ")
    if not server_names:
        raise PkiError("server_names must name at least one host name or IP address")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca("wisun-gateway test CA", t, max(CA_VALID_DAYS, valid_days))
    ca = _save_pair(directory, "ca", ca_cert, ca_key)
    nb, na = t - BACKDATE, t + dt.timedelta(days=valid_days)
    cert, key = _issue(
        ca_cert,
        ca_key,
        server_names[0],
        server_names=server_names,
        server=True,
        not_before=nb,
        not_after=na,
    )
    server = _save_pair(directory, "server", cert, key)
    cert, key = _issue(ca_cert, ca_key, headend_id, not_before=nb, not_after=na)
    headend = _save_pair(directory, headend_id, cert, key)
    clients: dict[str, CertPair] = {}
    for gw in gateway_ids:
        cert, key = _issue(ca_cert, ca_key, gw, not_before=nb, not_after=na)
        clients[gw] = _save_pair(directory, gw, cert, key)
    return Pki(directory, ca.cert, ca.key, server, headend, clients)


def issue_client(
    pki: Pki,
    client_id: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    stem: str | None = None,
) -> CertPair:
    """Issue another client certificate from ``pki``'s CA with an explicit validity window:
    for expired or soon-to-expire certificates. Files are ``<stem or client_id>.crt/.key``."""
    _check_name(client_id)
    if not_before.tzinfo is None or not_after.tzinfo is None:
        raise PkiError("not_before and not_after must be timezone-aware (UTC)")
    ca_cert, ca_key = _load_ca(pki)
    cert, key = _issue(ca_cert, ca_key, client_id, not_before=not_before, not_after=not_after)
    name = stem or client_id
    _check_name(name)
    return _save_pair(pki.directory, name, cert, key)


def issue_expired_client(pki: Pki, client_id: str, *, now: dt.datetime | None = None) -> CertPair:
    """A client certificate from the real CA that expired a day ago (files ``<id>-expired.*``)."""
    t = _utcnow(now)
    return issue_client(
        pki,
        client_id,
        not_before=t - dt.timedelta(days=30),
        not_after=t - dt.timedelta(days=1),
        stem=f"{client_id}-expired",
    )


@dataclass(frozen=True)
class ForeignPki:
    """A CA unrelated to the broker's, with one client certificate it issued."""

    ca: CertPair
    client: CertPair


def generate_foreign_client(
    directory: Path,
    client_id: str = "gateway-01",
    *,
    now: dt.datetime | None = None,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> ForeignPki:
    """Make a second, unrelated CA and a client certificate with ``client_id`` as CN: what a
    broker must reject even though the name looks right. Files: foreign-ca.*, foreign-<id>.*"""
    _check_name(client_id)
    t = _utcnow(now)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca("unrelated CA", t, max(CA_VALID_DAYS, valid_days))
    ca = _save_pair(directory, "foreign-ca", ca_cert, ca_key)
    cert, key = _issue(
        ca_cert,
        ca_key,
        client_id,
        not_before=t - BACKDATE,
        not_after=t + dt.timedelta(days=valid_days),
    )
    return ForeignPki(ca, _save_pair(directory, f"foreign-{client_id}", cert, key))
