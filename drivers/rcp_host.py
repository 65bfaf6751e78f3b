"""The Spinel backend of :class:`~drivers.transceiver.Transceiver`: a host for an RCP board.

Runs over any frame-level link (:class:`~drivers.framing.FrameTransport`): HDLC-lite over a byte
stream for UART and PTY, raw frames behind SPI transfer headers for SPI. One reader task decodes
everything the board sends (:class:`~drivers.host_link.SpinelHost`): replies are matched to
requests by TID (1..15), unsolicited STREAM_RAW frames go to a bounded receive queue, and an
unsolicited RESET_* status is treated as the board rebooting behind our back, so the settings
the mesh relies on (PHY enabled, channel, TX power, raw stream) are re-applied without the
caller noticing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.framing import ByteTransport, FrameTransport, as_frame_transport
from drivers.host_link import LinkStats, SpinelHost
from drivers.spinel import (
    NOISE_FLOOR_UNKNOWN,
    Cmd,
    Prop,
    RawTxRequest,
    ScanState,
    SpinelError,
    SpinelFrame,
    Status,
    Value,
    decode_rx_frame,
    decode_tx_done,
    encode,
    encode_tx_request,
    is_reset_status,
    pack,
    prop_name,
    status_name,
    unpack,
    unpack_uint,
)
from drivers.transceiver import (
    RadioError,
    RadioInfo,
    RadioTimeout,
    RxFrame,
    Transceiver,
    TxResult,
    TxStatus,
)

log = logging.getLogger(__name__)

MAX_PSDU = 2047  # 802.15.4g SUN PHYs; an OpenThread RCP itself refuses more than 127


__all__ = ["ByteTransport", "FrameTransport", "SpinelStats", "SpinelTransceiver"]


@dataclass
class SpinelStats(LinkStats):
    """Counters a diag API can show; every dropped or odd input is counted somewhere here."""

    unexpected_resets: int = 0
    rx_frames: int = 0
    rx_dropped: int = 0
    unsolicited_other: int = 0


@dataclass
class _Scan:
    results: dict[int, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SpinelTransceiver(Transceiver):
    """An RCP spoken to in Spinel. ``open()`` resets the board and learns what it is.

    ``transport`` is a frame link, or a byte link (UART, PTY) which gets HDLC-lite framing."""

    def __init__(
        self,
        transport: FrameTransport | ByteTransport,
        *,
        name: str = "radio",
        request_timeout: float = 1.0,
        retries: int = 2,
        reset_timeout: float = 3.0,
        tx_timeout: float = 2.0,
        rx_queue_size: int = 1024,
        on_reset: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.stats = SpinelStats()
        self.info: RadioInfo | None = None
        self._transport = transport
        self._link = as_frame_transport(transport)
        self._request_timeout = request_timeout
        self._retries = retries
        self._reset_timeout = reset_timeout
        self._tx_timeout = tx_timeout
        self._reset_listeners: list[Callable[[int], None]] = []
        if on_reset is not None:
            self._reset_listeners.append(on_reset)
        self._host = SpinelHost(
            self._link,
            name=name,
            stats=self.stats,
            on_unsolicited=self._on_unsolicited,
            on_failure=self._on_link_failure,
        )
        self._rx: asyncio.Queue[RxFrame | None] = asyncio.Queue(rx_queue_size)
        self._reapply: asyncio.Task[None] | None = None
        self._expect_reset = False
        self._reset_seen = asyncio.Event()
        self._scan: _Scan | None = None
        self._opened = False
        # What we re-apply after an unexpected reset.
        self._channel: int | None = None
        self._tx_power: int | None = None
        self._raw_stream = False

    def add_reset_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(status)`` on every unsolicited board reset (a RESET_* status we did
        not ask for), after the reset is counted and before settings are re-applied. Several
        layers may listen (the agent, a reconnecting wrapper), so listeners are added, never
        replaced; ``on_reset`` in the constructor is simply the first one."""
        self._reset_listeners.append(listener)

    def remove_reset_listener(self, listener: Callable[[int], None]) -> None:
        """Stop calling ``listener``; a listener that was never added is ignored."""
        if listener in self._reset_listeners:
            self._reset_listeners.remove(listener)

    @property
    def transport(self) -> FrameTransport | ByteTransport:
        """The link this host was built on (its own stats, e.g. ``SpiTransport.stats``)."""
        return self._transport

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> RadioInfo:
        if self._opened:
            raise RadioError(f"{self.name}: already open")
        self._opened = True
        await self._host.open()
        try:
            await self._reset_board()
            major, minor = (_int(v) for v in await self.get(Prop.PROTOCOL_VERSION, "ii"))
            if major != 4:
                raise RadioError(f"{self.name}: board speaks Spinel {major}.{minor}; need 4.x")
            ncp_version = str((await self.get(Prop.NCP_VERSION, "U"))[0])
            hwaddr = bytes(_as_bytes((await self.get(Prop.HWADDR, "E"))[0]))
            caps = _as_list((await self.get(Prop.CAPS, "A(i)"))[0])
            (channel,) = await self.get(Prop.PHY_CHAN, "C")
            self._channel = _int(channel)
            await self.set(Prop.PHY_ENABLED, "b", True)
        except BaseException:
            await self.close()
            raise
        self.info = RadioInfo(
            protocol_version=(major, minor),
            ncp_version=ncp_version,
            hwaddr=hwaddr,
            caps=tuple(_int(c) for c in caps),
        )
        log.info(
            "%s: %s, Spinel %d.%d, EUI-64 %s", self.name, ncp_version, major, minor, hwaddr.hex()
        )
        return self.info

    async def close(self) -> None:
        task, self._reapply = self._reapply, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        finally:
            await self._host.close("radio closed")

    async def _reset_board(self) -> None:
        for attempt in range(self._retries + 1):
            self._reset_seen.clear()
            self._expect_reset = True
            try:
                await self._host.send(encode(0, Cmd.RESET))
                try:
                    async with asyncio.timeout(self._reset_timeout):
                        await self._reset_seen.wait()
                except TimeoutError:
                    self.stats.timeouts += 1
                    log.warning(
                        "%s: no reset notification after %.1f s (attempt %d)",
                        self.name,
                        self._reset_timeout,
                        attempt + 1,
                    )
                    continue
                self._host.check()
                return
            finally:
                self._expect_reset = False
        raise RadioTimeout(
            f"{self.name}: board did not announce a reset (LAST_STATUS RESET_*) after "
            f"{self._retries + 1} RESET commands"
        )

    # --- Transceiver ---------------------------------------------------------------------------

    async def set_channel(self, channel: int) -> None:
        if not 0 <= channel <= 255:
            raise RadioError(f"{self.name}: channel {channel} out of range 0..255")
        await self.set(Prop.PHY_CHAN, "C", channel)
        self._channel = channel

    async def set_tx_power(self, dbm: int) -> None:
        if not -128 <= dbm <= 127:
            raise RadioError(f"{self.name}: TX power {dbm} dBm out of range -128..127")
        await self.set(Prop.PHY_TX_POWER, "c", dbm)
        self._tx_power = dbm

    async def enable_raw_stream(self, enabled: bool = True) -> None:
        await self.set(Prop.MAC_RAW_STREAM_ENABLED, "b", enabled)
        self._raw_stream = enabled

    async def transmit(self, psdu: bytes) -> TxResult:
        """Send one PSDU (MPDU + 2 FCS bytes, which the board recomputes). Not retried on
        timeout: a retry could put the frame on the air twice."""
        if not 3 <= len(psdu) <= MAX_PSDU:
            raise RadioError(f"{self.name}: PSDU of {len(psdu)} bytes; need 3..{MAX_PSDU}")
        value = encode_tx_request(RawTxRequest(psdu=psdu, channel=self._channel or 0))
        reply = await self._request(
            Cmd.PROP_VALUE_SET, Prop.STREAM_RAW, value, timeout=self._tx_timeout, retries=0
        )
        if reply.prop != Prop.LAST_STATUS:
            raise RadioError(f"{self.name}: unexpected transmit reply {reply.describe()}")
        try:
            done = decode_tx_done(reply.payload)
        except SpinelError as exc:
            self.stats.spinel_errors += 1
            raise RadioError(f"{self.name}: malformed transmit-done reply: {exc}") from exc
        if done.status == Status.OK:
            if done.ack is not None and done.ack.psdu:
                return TxResult(TxStatus.ACKED, done.ack.psdu, done.ack.rssi_dbm, done.ack.lqi)
            return TxResult(TxStatus.SENT)
        if done.status == Status.NO_ACK:
            return TxResult(TxStatus.NO_ACK)
        if done.status == Status.CCA_FAILURE:
            return TxResult(TxStatus.CCA_FAILURE)
        log.warning("%s: transmit failed: %s", self.name, status_name(done.status))
        return TxResult(TxStatus.FAILED)

    async def receive(self, timeout: float | None = None) -> RxFrame | None:
        if self._rx.empty():
            self._host.check()
        try:
            async with asyncio.timeout(timeout):
                item = await self._rx.get()
        except TimeoutError:
            return None
        if item is None:
            self._rx.put_nowait(None)  # keep waking later receivers too
            raise self._host.failure or RadioError(f"{self.name}: radio closed")
        return item

    async def energy_scan(self, channels: list[int], duration_ms: int) -> dict[int, int]:
        """Scan ``channels`` for ``duration_ms`` each. An OpenThread RCP scans only the first
        channel of the mask per request, so channels left out of a round are asked for again."""
        if self._scan is not None:
            raise RadioError(f"{self.name}: an energy scan is already running")
        if not 0 < duration_ms <= 0xFFFF:
            raise RadioError(f"{self.name}: scan duration {duration_ms} ms out of range")
        results: dict[int, int] = {}
        remaining = list(dict.fromkeys(channels))
        while remaining:
            scan = self._scan = _Scan()
            try:
                mask: list[Value] = list(remaining)
                await self.set(Prop.MAC_SCAN_MASK, "A(C)", mask)
                await self.set(Prop.MAC_SCAN_PERIOD, "S", duration_ms)
                await self.set(Prop.MAC_SCAN_STATE, "C", ScanState.ENERGY)
                budget = len(remaining) * duration_ms / 1000 + 2 * self._request_timeout
                try:
                    async with asyncio.timeout(budget):
                        await scan.done.wait()
                except TimeoutError:
                    self.stats.timeouts += 1
                    raise RadioTimeout(
                        f"{self.name}: energy scan of channels {remaining} did not finish "
                        f"within {budget:.1f} s"
                    ) from None
            finally:
                self._scan = None
            self._host.check()
            got = {ch: v for ch, v in scan.results.items() if ch in remaining}
            if not got:
                raise RadioError(f"{self.name}: energy scan of {remaining} returned no result")
            results.update(got)
            remaining = [ch for ch in remaining if ch not in results]
        return results

    async def sample_rssi(self) -> int:
        (rssi,) = await self.get(Prop.PHY_RSSI, "c")
        return _int(rssi)

    # --- requests ------------------------------------------------------------------------------

    async def get(self, prop: int, fmt: str) -> tuple[Value, ...]:
        """GET a property and decode its value by ``fmt``."""
        reply = await self._request(Cmd.PROP_VALUE_GET, prop, b"")
        return self._value(reply, prop, fmt)

    async def set(self, prop: int, fmt: str, *values: Value) -> tuple[Value, ...]:
        """SET a property; returns the value the board reports back."""
        try:
            payload = pack(fmt, *values)
        except SpinelError as exc:
            raise RadioError(f"{self.name}: cannot encode {prop_name(prop)}: {exc}") from exc
        reply = await self._request(Cmd.PROP_VALUE_SET, prop, payload)
        return self._value(reply, prop, fmt)

    def _value(self, reply: SpinelFrame, prop: int, fmt: str) -> tuple[Value, ...]:
        if reply.prop == Prop.LAST_STATUS and prop != Prop.LAST_STATUS:
            status = unpack_uint(reply.payload)[0] if reply.payload else Status.FAILURE
            raise RadioError(f"{self.name}: board refused {prop_name(prop)}: {status_name(status)}")
        try:
            return unpack(fmt, reply.payload)
        except SpinelError as exc:
            self.stats.spinel_errors += 1
            raise RadioError(
                f"{self.name}: {prop_name(prop)} reply {reply.payload.hex()} is not {fmt!r}: {exc}"
            ) from exc

    async def _request(
        self,
        command: int,
        prop: int,
        payload: bytes,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> SpinelFrame:
        return await self._host.request(
            command,
            prop,
            payload,
            timeout=self._request_timeout if timeout is None else timeout,
            retries=self._retries if retries is None else retries,
        )

    def _on_link_failure(self, error: RadioError) -> None:
        """Wake whoever waits on the board (a receiver, a reset, a scan): it is gone."""
        if self._rx.full():
            self._rx.get_nowait()
        self._rx.put_nowait(None)
        self._reset_seen.set()
        if self._scan is not None:
            self._scan.done.set()

    # --- receive path --------------------------------------------------------------------------

    def _on_unsolicited(self, frame: SpinelFrame) -> None:
        if frame.command != Cmd.PROP_VALUE_IS:
            self.stats.unsolicited_other += 1
            log.debug("%s: unsolicited %s", self.name, frame.describe())
            return
        if frame.prop == Prop.STREAM_RAW:
            self._on_stream_raw(frame.payload)
        elif frame.prop == Prop.LAST_STATUS:
            status, _ = unpack_uint(frame.payload)
            if is_reset_status(status):
                self._on_reset_notification(status)
            else:
                log.info("%s: board status %s", self.name, status_name(status))
        elif frame.prop == Prop.MAC_ENERGY_SCAN_RESULT:
            channel, rssi = (_int(v) for v in unpack("Cc", frame.payload))
            if self._scan is not None:
                old = self._scan.results.get(channel)
                self._scan.results[channel] = rssi if old is None else max(old, rssi)
        elif frame.prop == Prop.MAC_SCAN_STATE:
            (state,) = unpack("C", frame.payload)
            if state == ScanState.IDLE and self._scan is not None:
                self._scan.done.set()
        else:
            self.stats.unsolicited_other += 1
            log.debug("%s: unsolicited %s", self.name, frame.describe())

    def _on_stream_raw(self, payload: bytes) -> None:
        raw = decode_rx_frame(payload)
        frame = RxFrame(
            psdu=raw.psdu,
            rssi_dbm=raw.rssi_dbm,
            lqi=raw.lqi,
            channel=raw.channel,
            timestamp_us=raw.timestamp_us,
            noise_floor_dbm=None
            if raw.noise_floor_dbm == NOISE_FLOOR_UNKNOWN
            else raw.noise_floor_dbm,
        )
        self.stats.rx_frames += 1
        if self._rx.full():
            self._rx.get_nowait()  # the freshest frames matter most to a MAC
            self.stats.rx_dropped += 1
        self._rx.put_nowait(frame)

    def _on_reset_notification(self, status: int) -> None:
        if self._expect_reset:
            self._reset_seen.set()
            return
        self.stats.unexpected_resets += 1
        log.warning(
            "%s: board reset unexpectedly (%s); re-applying PHY, channel, TX power, raw stream",
            self.name,
            status_name(status),
        )
        for listener in list(self._reset_listeners):
            try:
                listener(status)
            except Exception:  # a listener's bug must not kill the reader or skip the re-apply
                log.exception("%s: reset listener failed", self.name)
        if self._reapply is None or self._reapply.done():
            self._reapply = asyncio.create_task(self._reapply_settings(), name="spinel-reapply")

    async def _reapply_settings(self) -> None:
        try:
            await self.set(Prop.PHY_ENABLED, "b", True)
            if self._channel is not None:
                await self.set(Prop.PHY_CHAN, "C", self._channel)
            if self._tx_power is not None:
                await self.set(Prop.PHY_TX_POWER, "c", self._tx_power)
            if self._raw_stream:
                await self.set(Prop.MAC_RAW_STREAM_ENABLED, "b", True)
            log.info("%s: settings re-applied after reset", self.name)
        except RadioError as exc:
            log.error("%s: could not re-apply settings after reset: %s", self.name, exc)

    async def wait_recovered(self) -> None:
        """Wait until settings re-applied after an unexpected reset (if one is in progress)."""
        task = self._reapply
        if task is not None:
            await asyncio.shield(task)


def _as_bytes(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    raise RadioError(f"expected bytes, got {value!r}")


def _as_list(value: Value) -> list[Value]:
    if isinstance(value, list):
        return value
    raise RadioError(f"expected a list, got {value!r}")


def _int(value: Value) -> int:
    if isinstance(value, int):
        return int(value)
    raise RadioError(f"expected an integer, got {value!r}")
