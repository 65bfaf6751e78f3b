"""The diag API: JSON over HTTPS with technician client certificates, on the maintenance interface.

aiohttp serves the HTTP; the TLS handshake is ours to watch. Each TCP connection first meets a
gate (:class:`_TlsGate`) that asks the :class:`~firmware_agent.diag.blocker.HandshakeBlocker`
whether the peer may try at all, runs the handshake with ``loop.start_tls`` and only then hands
the encrypted transport to aiohttp's request handler. That is how a failed handshake (foreign or
expired certificate, no certificate, garbage, a client that hangs up) is seen per peer address,
counted and, at the fifth, blocked; aiohttp's own ``ssl=`` would hide all of that.

Technicians' certificates come from their own CA (``ca_file``), not the uplink's: a stolen
gateway certificate must not open the maintenance port, and a technician certificate must not
talk to the head end. Every request is logged with the certificate's CN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from firmware_agent.clock import Clock
from firmware_agent.config import DIAG_MAX_PROBES, DiagConfig
from firmware_agent.diag.blocker import (
    HandshakeBlocker,
    Verdict,
)
from firmware_agent.diag.source import DiagSource, Json, NotAvailable, UnknownMeter

log = logging.getLogger(__name__)

API = "/api/v1"
#: Schema ids in every payload (docs/schemas/diag-*.json); bumped only on incompatible changes.
SCHEMA_PREFIX = "wisun-gateway/diag"
MAX_ALARMS = 500


class DiagSetupError(Exception):
    """The diag API's settings or TLS files cannot be used; names the setting or file and why."""


def _check_key_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DiagSetupError(f"diag.key_file {path}: file not found") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DiagSetupError(
            f"diag.key_file {path}: mode {stat.S_IMODE(mode):04o} lets others read the key; "
            "chmod 600 it"
        )


def build_server_context(cfg: DiagConfig) -> ssl.SSLContext:
    """Server side: our certificate, client certificates required and checked against the
    technicians' CA only (no system store)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if cfg.tls_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(cfg.ca_file))
    except FileNotFoundError:
        raise DiagSetupError(f"diag.ca_file {cfg.ca_file}: file not found") from None
    except ssl.SSLError as e:
        raise DiagSetupError(f"diag.ca_file {cfg.ca_file}: not a PEM CA certificate ({e})") from e
    if not Path(cfg.cert_file).is_file():
        raise DiagSetupError(f"diag.cert_file {cfg.cert_file}: file not found")
    _check_key_file(Path(cfg.key_file))
    try:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    except ssl.SSLError as e:
        raise DiagSetupError(
            f"diag.cert_file {cfg.cert_file} / diag.key_file {cfg.key_file}: unusable ({e})"
        ) from e
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "no handshake in time"
    text = str(exc) or exc.__class__.__name__
    return f"connection lost during the handshake ({text})"


class _TlsGate(asyncio.Protocol):
    """One TCP connection until its TLS handshake is done, then aiohttp's."""

    def __init__(self, server: DiagServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._eof = False
        self._lost = False
        self._peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else "?"
        decision = self._server.blocker.check(self._peer)
        if decision.verdict is Verdict.REFUSE:
            log.warning("%s", decision.message)
            transport.abort()
            return
        if decision.verdict is Verdict.RELEASED:
            log.info("%s", decision.message)
        self._server.spawn(self._handshake(transport))

    async def _handshake(self, transport: asyncio.Transport) -> None:
        server = self._server
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                self,
                server.context,
                server_side=True,
                ssl_handshake_timeout=server.config.handshake_timeout_s,
            )
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            decision = server.blocker.failed(self._peer, _reason(exc))
            log.warning("%s", decision.message)
            server.handshakes_failed += 1
            transport.abort()
            return
        if tls is None:  # the peer went away as the handshake completed
            return
        server.blocker.succeeded(self._peer)
        server.handshakes_ok += 1
        handler: asyncio.Protocol = server.request_handler()
        tls.set_protocol(handler)
        handler.connection_made(tls)
        if self._buffer:
            handler.data_received(bytes(self._buffer))
            self._buffer.clear()
        if self._eof:
            handler.eof_received()
        if self._lost:
            handler.connection_lost(None)

    def data_received(self, data: bytes) -> None:
        self._buffer += data  # only between the handshake and the hand-over

    def eof_received(self) -> bool | None:
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True


def _cn(request: web.Request) -> str:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return "?"
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "?"


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"schema": f"{SCHEMA_PREFIX}/error/1", "error": kind, "message": message}, status=status
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DiagServer:
    """The diag API on ``config.bind``:``config.port`` for ``source``.

    ``await start()`` binds (returns the address actually bound: port 0 picks one), ``await
    close()`` stops. Nothing a client sends can stop it: bad requests get JSON errors, failed
    handshakes are counted and blocked."""

    def __init__(
        self,
        source: DiagSource,
        config: DiagConfig,
        clock: Clock,
        *,
        context: ssl.SSLContext | None = None,
        blocker: HandshakeBlocker | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.clock = clock
        self.context = context or build_server_context(config)
        self.blocker = blocker or HandshakeBlocker(
            clock,
            max_failures=config.max_failures,
            block_s=config.block_s,
            window_s=config.failure_window_s,
        )
        self.handshakes_ok = 0
        self.handshakes_failed = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] | None = None
        self._gw: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(
            [
                web.get(f"{API}/status", self._status),
                web.get(f"{API}/neighbours", self._neighbours),
                web.get(f"{API}/routes", self._routes),
                web.get(f"{API}/meters/{{meter_id}}/paths", self._paths),
                web.get(f"{API}/spool", self._spool),
                web.get(f"{API}/uplink", self._uplink),
                web.get(f"{API}/alarms", self._alarms),
                web.post(f"{API}/snr-check", self._snr_check),
            ]
        )
        return app

    async def start(self) -> tuple[str, int]:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _TlsGate(self), self.config.bind, self.config.port
            )
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (str(host), int(port))
        log.info("diag API listening on https://%s", _hostport(*self.address))
        return self.address

    def request_handler(self) -> asyncio.Protocol:
        assert self._runner is not None and self._runner.server is not None
        handler: asyncio.Protocol = self._runner.server()
        return handler

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DiagServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests -------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        who = _cn(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            log.info("diag API %s %s by %s: %d", request.method, request.path, who, exc.status)
            if exc.status == 404:
                return _error(404, "not_found", f"no endpoint {request.path}; see docs/diag.md")
            if exc.status == 405:
                return _error(405, "method_not_allowed", f"{request.method} {request.path}")
            return _error(exc.status, "http_error", exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not kill the server; the client gets told
            log.exception("diag API %s %s by %s failed", request.method, request.path, who)
            return _error(500, "internal", f"{exc.__class__.__name__}: {exc}")
        log.info("diag API %s %s by %s: %d", request.method, request.path, who, response.status)
        return response

    def _payload(self, kind: str, body: Json) -> web.Response:
        gateway = self._gateway_id()
        return web.json_response(
            {"schema": f"{SCHEMA_PREFIX}/{kind}/1", "gateway_id": gateway, **body}
        )

    def _gateway_id(self) -> str:
        if self._gw is None:
            self._gw = str(self.source.snapshot().get("gateway_id", "?"))
        return self._gw

    async def _status(self, request: web.Request) -> web.Response:
        snap = self.source.snapshot()
        snap["diag"] = {
            "handshakes_ok": self.handshakes_ok,
            "handshakes_failed": self.handshakes_failed,
            "blocks_total": self.blocker.blocks_total,
            "blocked": self.blocker.blocked(),
        }
        return self._payload("status", snap)

    async def _neighbours(self, request: web.Request) -> web.Response:
        return self._payload(
            "neighbours",
            {"mesh": self.source.mesh_backend(), "neighbours": self.source.neighbours()},
        )

    async def _routes(self, request: web.Request) -> web.Response:
        return self._payload("routes", self.source.routes())

    async def _paths(self, request: web.Request) -> web.Response:
        meter_id = request.match_info["meter_id"]
        try:
            body = self.source.paths(meter_id)
        except UnknownMeter as exc:
            return _error(404, "unknown_meter", str(exc.args[0]) if exc.args else meter_id)
        return self._payload("paths", body)

    async def _spool(self, request: web.Request) -> web.Response:
        return self._payload("spool", {"spool": self.source.spool_health()})

    async def _uplink(self, request: web.Request) -> web.Response:
        return self._payload("uplink", {"uplink": self.source.uplink_health()})

    async def _alarms(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", "50")
        try:
            limit = int(raw)
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_ALARMS:
            return _error(400, "bad_request", f"limit {raw!r}: expected 1..{MAX_ALARMS}")
        return self._payload("alarms", {"alarms": self.source.recent_alarms(limit)})

    async def _snr_check(self, request: web.Request) -> web.Response:
        body: Any = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError as exc:
                return _error(400, "bad_request", f"body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "bad_request", "body must be a JSON object")
        count = body.get("count", self.config.probe_count)
        if (
            not isinstance(count, int)
            or isinstance(count, bool)
            or not 1 <= count <= DIAG_MAX_PROBES
        ):
            return _error(
                400, "bad_request", f"count {count!r}: expected an integer 1..{DIAG_MAX_PROBES}"
            )
        macs: list[bytes] | None = None
        wanted = body.get("neighbours")
        if wanted is not None:
            if not isinstance(wanted, list):
                return _error(400, "bad_request", "neighbours must be a list of EUI-64 hex strings")
            macs = []
            for item in wanted:
                mac = _parse_eui64(item)
                if mac is None:
                    return _error(400, "bad_request", f"neighbours: {item!r} is not an EUI-64")
                macs.append(mac)
        started = self.clock.monotonic()
        try:
            links = await self.source.probe_neighbours(count, macs)
        except NotAvailable as exc:
            return _error(501, "not_available", str(exc))
        return self._payload(
            "snr-check",
            {
                "count": count,
                "took_s": round(self.clock.monotonic() - started, 3),
                "links": links,
            },
        )


def _parse_eui64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        mac = bytes.fromhex(value.replace(":", "").replace("-", ""))
    except ValueError:
        return None
    return mac if len(mac) == 8 else None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
