"""The laptop's side of the diag API: HTTPS with the technician's certificate, standard library
only (``http.client`` + ``ssl``), so ``hes-diag`` needs nothing the base install lacks.

Every way a request can fail ends as a :class:`DiagClientError` whose ``kind`` says which of
the field's questions it answers: is the gateway there at all (``unreachable``), did it hang up
on us (``refused``: blocked after failed handshakes, or our certificate refused under TLS 1.3),
is a certificate wrong (``bad_certificate``: ours or theirs, named), or did it answer something
we cannot use (``protocol`` / ``api``). The message is the reason printed to the technician.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Json = dict[str, Any]

#: Alerts a TLS server sends when it does not accept our certificate.
CLIENT_CERT_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "it does not know the CA that issued our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "our certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "it could not verify our certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "our certificate is revoked",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it requires a technician certificate and got none",
    "TLSV1_ALERT_ACCESS_DENIED": "it denied access to our certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "it does not support our certificate's type",
}


class DiagClientError(Exception):
    """A request that did not give an answer; ``kind`` is one of unreachable, refused,
    bad_certificate, protocol, api, setup."""

    kind = "protocol"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reason = message


class Unreachable(DiagClientError):
    kind = "unreachable"


class Refused(DiagClientError):
    kind = "refused"


class BadCertificate(DiagClientError):
    kind = "bad_certificate"


class ProtocolFailure(DiagClientError):
    kind = "protocol"


class SetupError(DiagClientError):
    kind = "setup"


class ApiError(DiagClientError):
    """The gateway answered with an error document (e.g. 404 unknown meter)."""

    kind = "api"

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"HTTP {status} {error}: {message}")
        self.status = status
        self.error = error


@dataclass(frozen=True)
class Target:
    """Where a gateway's diag API is and what we prove ourselves with."""

    name: str
    url: str
    ca: Path  # the CA that signed the gateway's diag certificate
    cert: Path  # our technician certificate ...
    key: Path  # ... and its key
    server_name: str | None = None  # the name in the gateway's certificate, if not the URL's host

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        if parts.scheme != "https" or not parts.hostname:
            raise SetupError(f"{self.name}: URL {self.url!r} must be https://HOST:PORT")
        try:
            port = parts.port or 443
        except ValueError as exc:
            raise SetupError(f"{self.name}: URL {self.url!r}: {exc}") from None
        return parts.hostname, port


def build_client_context(target: Target) -> ssl.SSLContext:
    """Trust only the CA named for this gateway; present the technician certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for path, what in ((target.ca, "ca"), (target.cert, "cert"), (target.key, "key")):
        if not Path(path).is_file():
            raise SetupError(f"{target.name}: {what} file {path} not found")
    try:
        ctx.load_verify_locations(cafile=str(target.ca))
    except ssl.SSLError as exc:
        raise SetupError(
            f"{target.name}: ca file {target.ca} is not a PEM certificate ({exc})"
        ) from None
    try:
        ctx.load_cert_chain(str(target.cert), str(target.key))
    except ssl.SSLError as exc:
        raise SetupError(
            f"{target.name}: cert {target.cert} / key {target.key} do not load or match ({exc})"
        ) from None
    return ctx


def classify(exc: BaseException, target: Target) -> DiagClientError:
    """The error a technician can act on, for what the socket or TLS layer raised."""
    host, port = target.host_port
    where = f"{host}:{port}"
    if isinstance(exc, DiagClientError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BadCertificate(
            f"the gateway's certificate at {where} does not verify against {target.ca}: "
            f"{exc.verify_message or exc.reason}"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in CLIENT_CERT_ALERTS:
            return BadCertificate(
                f"the gateway at {where} refused our technician certificate {target.cert}: "
                f"{CLIENT_CERT_ALERTS[reason]} ({reason})"
            )
        if isinstance(exc, ssl.SSLEOFError) or reason in ("UNEXPECTED_EOF_WHILE_READING",):
            return _hung_up(where)
        return Refused(f"TLS with {where} failed: {reason or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return Unreachable(f"connection refused by {where}: is the agent running with diag on?")
    if isinstance(exc, socket.gaierror):
        return Unreachable(f"cannot resolve {host}: {exc.strerror or exc}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return Unreachable(f"no answer from {where} in time")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected):
        return _hung_up(where)
    if isinstance(exc, OSError):
        return Unreachable(f"cannot reach {where}: {exc.strerror or exc}")
    if isinstance(exc, http.client.HTTPException):
        return ProtocolFailure(f"{where} does not speak the diag API: {exc!r}")
    return ProtocolFailure(f"{where}: {exc!r}")


def _dropped_after_handshake(exc: BaseException, target: Target) -> DiagClientError:
    """With TLS 1.3 the client's handshake completes before the server has checked our
    certificate; a server that rejects it then just closes (our server does not get to send the
    alert). A fresh connection that drops at once after a good handshake is that."""
    if isinstance(exc, ssl.SSLError) and (exc.reason or "") in CLIENT_CERT_ALERTS:
        return classify(exc, target)
    host, port = target.host_port
    return BadCertificate(
        f"the gateway at {host}:{port} refused our technician certificate {target.cert}: it "
        "closed the connection right after the TLS handshake (under TLS 1.3 a rejected client "
        "certificate shows this way; the gateway's log names the reason)"
    )


def _hung_up(where: str) -> Refused:
    return Refused(
        f"{where} closed the connection during TLS: this address may be blocked after "
        "repeated failed handshakes (wait for the block to end), or the gateway did not "
        "accept our certificate"
    )


class DiagClient:
    """One gateway's diag API. Reuses one keep-alive connection; ``close()`` when done."""

    def __init__(self, target: Target, *, timeout: float = 15.0) -> None:
        self.target = target
        self.timeout = timeout
        self._context = build_client_context(target)
        self._conn: http.client.HTTPSConnection | None = None

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            host, port = self.target.host_port
            self._conn = http.client.HTTPSConnection(
                host, port, context=self._context, timeout=self.timeout
            )
            if self.target.server_name:
                # http.client has no server_hostname knob: set up TLS ourselves with it.
                self._conn.connect = self._connect_with_name(self._conn)  # type: ignore[method-assign]
        return self._conn

    def _connect_with_name(self, conn: http.client.HTTPSConnection) -> Any:
        def connect() -> None:
            host, port = self.target.host_port
            raw = socket.create_connection((host, port), self.timeout)
            conn.sock = self._context.wrap_socket(raw, server_hostname=self.target.server_name)

        return connect

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DiagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str) -> Json:
        return self._request("GET", path, None)

    def post(self, path: str, body: Json) -> Json:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: Json | None) -> Json:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            reused = self._conn is not None and self._conn.sock is not None
            conn = self._connection()
            if not reused:
                try:
                    conn.connect()  # TCP + TLS handshake: failures here are "before TLS"
                except (OSError, http.client.HTTPException) as exc:
                    self.close()
                    raise classify(exc, self.target) from None
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ssl.SSLEOFError) as exc:  # fmt: skip
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle keep-alive connection: once more
                raise _dropped_after_handshake(exc, self.target) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise classify(exc, self.target) from None
            return self._decode(response.status, raw)
        raise AssertionError("unreachable")  # pragma: no cover

    def _decode(self, status: int, raw: bytes) -> Json:
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ProtocolFailure(
                f"HTTP {status} from {self.target.url} is not JSON: {raw[:80]!r}"
            ) from None
        if not isinstance(doc, dict):
            raise ProtocolFailure(f"HTTP {status} from {self.target.url}: not a JSON object")
        if status >= 400:
            raise ApiError(status, str(doc.get("error", "error")), str(doc.get("message", "")))
        return doc
