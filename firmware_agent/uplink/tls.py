"""The uplink's TLS context, built by us rather than by paho's ``tls_set``.

Why: we want the trust anchor pinned to the configured CA file only (no system store), TLS 1.3 as
the floor unless the operator explicitly asks for 1.2, hostname checking on, and an early warning
before the gateway's own certificate expires, because an expired client certificate silently turns
into "connection lost before CONNACK" with TLS 1.3.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from firmware_agent.config import TlsConfig

EXPIRY_WARNING_DAYS = 30


class TlsSetupError(Exception):
    """The TLS material named in the configuration cannot be used; names the file and why."""


def build_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client context: CA pinned to ``tls.ca_file``, hostname check on, our cert + key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    if tls.version == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    elif tls.version == "1.2":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    else:
        raise TlsSetupError(f"tls.version {tls.version!r}: expected '1.3' or '1.2'")
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    except FileNotFoundError as e:
        raise TlsSetupError(f"tls.ca_file {tls.ca_file}: file not found") from e
    except ssl.SSLError as e:
        raise TlsSetupError(f"tls.ca_file {tls.ca_file}: not a PEM CA certificate ({e})") from e
    for f, what in ((tls.cert_file, "tls.cert_file"), (tls.key_file, "tls.key_file")):
        if not Path(f).is_file():
            raise TlsSetupError(f"{what} {f}: file not found")
    try:
        ctx.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    except ssl.SSLError as e:
        raise TlsSetupError(
            f"tls.cert_file {tls.cert_file} / tls.key_file {tls.key_file}: unusable ({e})"
        ) from e
    return ctx


@dataclass(frozen=True)
class CertValidity:
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime


def read_validity(cert_file: Path) -> CertValidity:
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as e:
        raise TlsSetupError(f"tls.cert_file {cert_file}: cannot read certificate ({e})") from e
    return CertValidity(
        cert.subject.rfc4514_string(), cert.not_valid_before_utc, cert.not_valid_after_utc
    )


def certificate_cn(cert_file: Path) -> str:
    """The subject CN of our client certificate: the broker maps it to the MQTT user name
    (``use_identity_as_username``), so it *is* the gateway's identity."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as e:
        raise TlsSetupError(f"tls.cert_file {cert_file}: cannot read certificate ({e})") from e
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise TlsSetupError(f"tls.cert_file {cert_file}: the certificate has no CN")
    value = names[0].value
    return value.decode() if isinstance(value, bytes) else value


def check_gateway_identity(cert_file: Path, gateway_id: str) -> None:
    """Refuse to start when the certificate names another gateway: the broker would file our
    records (and its ACL our topics) under the CN, not under ``gateway.id``."""
    cn = certificate_cn(cert_file)
    if cn != gateway_id:
        raise TlsSetupError(
            f"tls.cert_file {cert_file}: certificate CN {cn!r} is not the gateway id "
            f"{gateway_id!r} (gateway.id must equal the client certificate's CN)"
        )


def validity_problem(validity: CertValidity, now: float) -> str | None:
    """``"expired"``, ``"not yet valid"`` or None at time ``now``."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if t >= validity.not_after:
        return "expired"
    if t < validity.not_before:
        return "not yet valid"
    return None


def expiry_warning(
    validity: CertValidity, now: float, within_days: int = EXPIRY_WARNING_DAYS
) -> str | None:
    """A warning text when the certificate is expired, not yet valid, or expires soon."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if t >= validity.not_after:
        return (
            f"client certificate {validity.subject} EXPIRED on "
            f"{validity.not_after:%Y-%m-%d %H:%M} UTC: the broker will reject it"
        )
    if t < validity.not_before:
        return (
            f"client certificate {validity.subject} is not valid before "
            f"{validity.not_before:%Y-%m-%d %H:%M} UTC (check the clock)"
        )
    left = validity.not_after - t
    if left <= dt.timedelta(days=within_days):
        return (
            f"client certificate {validity.subject} expires in {left.days} days "
            f"({validity.not_after:%Y-%m-%d} UTC): renew it"
        )
    return None
