"""A virtual RCP: the Spinel server side of a radio co-processor, on the simulated RF medium.

:class:`VirtualRcp` is sans-IO and framing-neutral at its core: one Spinel frame from the host goes
in through :meth:`VirtualRcp.handle_frame`, Spinel frames for the host come out of
:meth:`VirtualRcp.take_frame` (an output listener is told whenever output is queued, e.g. when a
frame heard on the air produces output between requests). The SPI slave emulation
(``hil.spidev_emu``) sits on that level. For UART-style links the HDLC-lite edge is built in:
bytes go in through :meth:`VirtualRcp.feed` and come out of :meth:`VirtualRcp.take_output`.
It answers like OpenThread's RCP does — the same properties, the same STREAM_RAW layouts, the
same reset notification — so any host that follows the Spinel draft, our driver included, can
drive it. :func:`serve_pty` is the thin I/O edge that serves it on a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import struct
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.hdlc import HdlcDecoder, HdlcError, hdlc_encode
from drivers.pty_spawn import WATCH_STDIN_ENV
from drivers.spinel import (
    Cap,
    Cmd,
    InterfaceType,
    Prop,
    RawRxFrame,
    RawTxRequest,
    ScanState,
    SpinelError,
    SpinelFrame,
    Status,
    TxDone,
    Value,
    decode_frame,
    decode_tx_request,
    encode,
    encode_rx_frame,
    encode_tx_done,
    pack,
    pack_uint,
    unpack,
)
from firmware_agent.clock import Clock
from firmware_agent.mesh.frames import fcs16 as fcs154
from hil.medium import DEFAULT_CSMA, CsmaConfig, Medium, TxOutcome, csma_transmit

log = logging.getLogger(__name__)

PROTOCOL_VERSION = (4, 3)
DEFAULT_NCP_VERSION = "wisun-gw-virtual-rcp/0.1; SIM; spinel-4.3"
#: Wi-SUN FAN FCC plan 1 (902.2 MHz + 200 kHz × n): 129 channels.
DEFAULT_CHANNELS = tuple(range(129))
MAX_PSDU = 2047
OUTPUT_LIMIT = 1 << 20  # bytes held for a host that is not reading; older output is dropped


class RawLineBytes(bytes):
    """Bytes injected on the line to the host as they are (noise), not a Spinel frame."""


FCS_LEN = 2


# --- just enough 802.15.4 to filter and ack ----------------------------------------------------


@dataclass(frozen=True)
class MacHeader:
    """The addressing part of an 802.15.4 MAC header. Addresses are as on the air (LSB first)."""

    frame_type: int
    version: int
    ack_request: bool
    seq: int | None
    dst_pan: int | None
    dst: bytes | None
    src: bytes | None


def _pan_presence(version: int, dmode: int, smode: int, compress: bool) -> tuple[bool, bool]:
    """(dst PAN present, src PAN present) per 802.15.4-2006 §7.2.1.5 / -2015 table 7-2."""
    if version < 2:
        return dmode != 0, smode != 0 and (not compress or dmode == 0)
    if dmode and smode:
        if dmode == 3 and smode == 3:
            return not compress, False
        return True, not compress
    if dmode:
        return not compress, False
    if smode:
        return False, not compress
    return compress, False


def parse_mac_header(mpdu: bytes) -> MacHeader | None:
    """Parse frame control, sequence number and addresses; None if the header is truncated or
    uses a reserved addressing mode."""
    if len(mpdu) < 2:
        return None
    fc = mpdu[0] | mpdu[1] << 8
    version = (fc >> 12) & 3
    dmode, smode = (fc >> 10) & 3, (fc >> 14) & 3
    if dmode == 1 or smode == 1:
        return None
    pos = 2
    seq: int | None = None
    if not (version == 2 and fc & 0x100):
        if len(mpdu) < 3:
            return None
        seq = mpdu[2]
        pos = 3
    dpan_present, span_present = _pan_presence(version, dmode, smode, bool(fc & 0x40))
    sizes = {0: 0, 2: 2, 3: 8}
    need = pos + 2 * dpan_present + sizes[dmode] + 2 * span_present + sizes[smode]
    if len(mpdu) < need:
        return None
    dst_pan = None
    if dpan_present:
        dst_pan = mpdu[pos] | mpdu[pos + 1] << 8
        pos += 2
    dst = mpdu[pos : pos + sizes[dmode]] if dmode else None
    pos += sizes[dmode] + 2 * span_present
    src = mpdu[pos : pos + sizes[smode]] if smode else None
    return MacHeader(fc & 7, version, bool(fc & 0x20), seq, dst_pan, dst, src)


BROADCAST_SHORT = b"\xff\xff"

Acker = Callable[[bytes, bytes], "bytes | None"]
"""(received PSDU, our extended address in EUI-64 order) → ack PSDU to send, or None."""


def default_acker(psdu: bytes, ext_addr: bytes) -> bytes | None:
    """Ack a frame with AR set whose destination is our extended address: an Imm-Ack for frame
    versions 0/1, an Enh-Ack (version 2, addressed back to the sender, no IEs) for version 2."""
    header = parse_mac_header(psdu[:-FCS_LEN])
    if header is None or not header.ack_request or header.dst != ext_addr[::-1]:
        return None
    if header.version < 2:
        if header.seq is None:
            return None
        mpdu = bytes((0x02, 0x00, header.seq))
    else:
        fc = 0x0002 | 0x2000
        body = b""
        if header.seq is None:
            fc |= 0x0100
        else:
            body += bytes((header.seq,))
        if header.src is not None:
            fc |= (3 if len(header.src) == 8 else 2) << 10
            if len(header.src) == 8:
                fc |= 0x0040  # PAN ID compression: no PAN ID for an extended-only destination
            else:
                body += struct.pack("<H", header.dst_pan if header.dst_pan is not None else 0xFFFF)
            body += header.src
        mpdu = struct.pack("<H", fc) + body
    return mpdu + struct.pack("<H", fcs154(mpdu))


# --- the RCP -------------------------------------------------------------------------------------


@dataclass
class RcpCounters:
    hdlc_errors: int = 0
    spinel_errors: int = 0
    unknown_props: int = 0
    frames_tx: int = 0
    cca_failures: int = 0
    tx_queued: int = 0  # requests that waited for an earlier transmission to finish
    frames_to_host: int = 0
    frames_not_streamed: int = 0
    frames_filtered: int = 0
    acks_sent: int = 0
    output_dropped_bytes: int = 0
    resets: int = 0


class VirtualRcp:
    """An emulated RCP board on a :class:`Medium` (it is a ``RadioNode`` there)."""

    def __init__(
        self,
        medium: Medium,
        rng: random.Random,
        clock: Clock,
        *,
        eui64: bytes,
        position: tuple[float, float] = (0.0, 0.0),
        channel: int = 0,
        tx_power_dbm: int = 14,
        channels: tuple[int, ...] = DEFAULT_CHANNELS,
        ncp_version: str = DEFAULT_NCP_VERSION,
        rssi_jitter_db: float = 1.0,
        acker: Acker = default_acker,
        csma: CsmaConfig = DEFAULT_CSMA,
    ) -> None:
        if len(eui64) != 8:
            raise ValueError(f"EUI-64 must be 8 bytes, got {eui64.hex()}")
        if channel not in channels:
            raise ValueError(f"channel {channel} is not among the supported channels")
        self.eui64 = eui64
        self.medium = medium
        self.rng = rng
        self.clock = clock
        self.ncp_version = ncp_version
        self.channels = channels
        self.rssi_jitter_db = rssi_jitter_db
        self.acker = acker
        self.csma = csma
        self.counters = RcpCounters()
        self._boot_channel = channel
        self._boot_tx_power = tx_power_dbm
        self._decoder = HdlcDecoder()
        self._out: deque[bytes] = deque()  # Spinel frames, or RawLineBytes
        self._out_bytes = 0
        self._listener: Callable[[], None] | None = None
        #: Fault injection: this many next transmissions fail channel access (CCA_FAILURE).
        self.cca_failures_to_inject = 0
        #: Transmissions wait here while one is on the air (the host may not wait for TX-done).
        self._tx_queue: deque[tuple[int, RawTxRequest]] = deque()
        self._tx_busy = False
        self._generation = 0  # bumped at each reset: a pending TX-done is then dropped
        self._apply_boot_state()
        medium.attach(self, position, tx_power_dbm, channel)

    def _apply_boot_state(self) -> None:
        self.phy_enabled = False
        self.raw_stream = False
        self.promiscuous = 0
        self.channel = self._boot_channel
        self.tx_power_dbm = self._boot_tx_power
        self.laddr = self.eui64
        self.scan_mask: list[int] = []
        self.scan_period_ms = 0
        self._generation += 1
        self._tx_queue.clear()
        self._tx_busy = False

    # --- host side: frames in, frames out (any framing); HDLC bytes for UART-style links -------

    def set_output_listener(self, listener: Callable[[], None] | None) -> None:
        """Called whenever output is queued (the edge then drains :meth:`take_frame` or
        :meth:`take_output`)."""
        self._listener = listener

    def has_output(self) -> bool:
        return bool(self._out)

    def take_frame(self) -> bytes | None:
        """The next Spinel frame for the host (or injected raw bytes, a :class:`RawLineBytes`),
        or None when nothing is queued."""
        if not self._out:
            return None
        item = self._out.popleft()
        self._out_bytes -= len(item)
        return item

    def output_dropped(self, count: int) -> None:
        self.counters.output_dropped_bytes += count

    def take_output(self) -> bytes:
        """Everything queued, as HDLC-lite bytes (raw injections go out as they are)."""
        out = bytearray()
        while (item := self.take_frame()) is not None:
            out += item if isinstance(item, RawLineBytes) else hdlc_encode(item)
        return bytes(out)

    def feed(self, data: bytes) -> None:
        """HDLC-lite bytes from the host. Malformed input is counted and logged, never raised."""
        for item in self._decoder.feed(data):
            if isinstance(item, HdlcError):
                self.counters.hdlc_errors += 1
                log.warning("virtual RCP: %s: %s", item, item.data.hex())
                continue
            self.handle_frame(item)

    def handle_frame(self, frame: bytes) -> None:
        """One Spinel frame from the host, however it was framed on the wire. A frame that is
        not Spinel is counted and logged, never raised."""
        try:
            decoded = decode_frame(frame)
        except SpinelError as exc:
            self.counters.spinel_errors += 1
            log.warning("virtual RCP: bad Spinel frame %s: %s", frame.hex(), exc)
            return
        self._handle(decoded)

    def inject_to_host(self, raw: bytes) -> None:
        """Put raw bytes on the line to the host (line noise, fault injection). Over SPI they
        arrive as one (undecodable) frame."""
        self._queue(RawLineBytes(raw))

    def reboot(self, reason: Status = Status.RESET_POWER_ON) -> None:
        """Reset as a board does: settings back to boot values, then the reset notification."""
        self.counters.resets += 1
        self._apply_boot_state()
        self.medium.set_channel(self, self.channel)
        self.medium.set_tx_power(self, self.tx_power_dbm)
        self._send(0, Cmd.PROP_VALUE_IS, Prop.LAST_STATUS, pack_uint(reason))

    def _queue(self, item: bytes) -> None:
        self._out.append(item)
        self._out_bytes += len(item)
        while self._out_bytes > OUTPUT_LIMIT and len(self._out) > 1:
            dropped = self._out.popleft()
            self._out_bytes -= len(dropped)
            self.counters.output_dropped_bytes += len(dropped)
        if self._listener is not None:
            self._listener()

    def _send(self, tid: int, command: int, prop: int | None, payload: bytes = b"") -> None:
        self._queue(encode(tid, command, prop, payload))

    def _status(self, tid: int, status: int) -> None:
        self._send(tid, Cmd.PROP_VALUE_IS, Prop.LAST_STATUS, pack_uint(status))

    def _handle(self, frame: SpinelFrame) -> None:
        tid = frame.tid
        if frame.command == Cmd.RESET:
            self.reboot(Status.RESET_SOFTWARE)
        elif frame.command == Cmd.NOOP:
            self._status(tid, Status.OK)
        elif frame.command == Cmd.PROP_VALUE_GET:
            assert frame.prop is not None
            self._get(tid, frame.prop)
        elif frame.command == Cmd.PROP_VALUE_SET:
            assert frame.prop is not None
            self._set(tid, frame.prop, frame.payload)
        elif frame.command in (Cmd.PROP_VALUE_INSERT, Cmd.PROP_VALUE_REMOVE):
            known = frame.prop in self._formats()
            self._status(tid, Status.INVALID_COMMAND_FOR_PROP if known else Status.PROP_NOT_FOUND)
        else:
            self._status(tid, Status.INVALID_COMMAND)

    # --- properties ----------------------------------------------------------------------------

    def _formats(self) -> dict[int, str]:
        return {
            Prop.LAST_STATUS: "i",
            Prop.PROTOCOL_VERSION: "ii",
            Prop.NCP_VERSION: "U",
            Prop.INTERFACE_TYPE: "i",
            Prop.CAPS: "A(i)",
            Prop.HWADDR: "E",
            Prop.PHY_ENABLED: "b",
            Prop.PHY_CHAN: "C",
            Prop.PHY_CHAN_SUPPORTED: "A(C)",
            Prop.PHY_TX_POWER: "c",
            Prop.PHY_RSSI: "c",
            Prop.MAC_RAW_STREAM_ENABLED: "b",
            Prop.MAC_15_4_LADDR: "E",
            Prop.MAC_PROMISCUOUS_MODE: "C",
            Prop.MAC_SCAN_STATE: "C",
            Prop.MAC_SCAN_MASK: "A(C)",
            Prop.MAC_SCAN_PERIOD: "S",
        }

    def _value(self, prop: int) -> tuple[Value, ...]:
        if prop == Prop.LAST_STATUS:
            return (Status.OK,)
        if prop == Prop.PROTOCOL_VERSION:
            return PROTOCOL_VERSION
        if prop == Prop.NCP_VERSION:
            return (self.ncp_version,)
        if prop == Prop.INTERFACE_TYPE:
            return (InterfaceType.THREAD,)
        if prop == Prop.CAPS:
            return ([int(Cap.CONFIG_RADIO), int(Cap.MAC_RAW)],)
        if prop == Prop.HWADDR:
            return (self.eui64,)
        if prop == Prop.PHY_ENABLED:
            return (self.phy_enabled,)
        if prop == Prop.PHY_CHAN:
            return (self.channel,)
        if prop == Prop.PHY_CHAN_SUPPORTED:
            return (list(self.channels),)
        if prop == Prop.PHY_TX_POWER:
            return (self.tx_power_dbm,)
        if prop == Prop.PHY_RSSI:
            return (self.sample_rssi(self.channel),)
        if prop == Prop.MAC_RAW_STREAM_ENABLED:
            return (self.raw_stream,)
        if prop == Prop.MAC_15_4_LADDR:
            return (self.laddr,)
        if prop == Prop.MAC_PROMISCUOUS_MODE:
            return (self.promiscuous,)
        if prop == Prop.MAC_SCAN_STATE:
            return (ScanState.IDLE,)
        if prop == Prop.MAC_SCAN_MASK:
            return (list(self.scan_mask),)
        if prop == Prop.MAC_SCAN_PERIOD:
            return (self.scan_period_ms,)
        raise KeyError(prop)  # pragma: no cover - _formats() guards

    def _get(self, tid: int, prop: int) -> None:
        fmt = self._formats().get(prop)
        if fmt is None:
            self.counters.unknown_props += 1
            self._status(tid, Status.PROP_NOT_FOUND)
            return
        self._send(tid, Cmd.PROP_VALUE_IS, prop, pack(fmt, *self._value(prop)))

    def _set(self, tid: int, prop: int, payload: bytes) -> None:
        if prop == Prop.STREAM_RAW:
            self._transmit(tid, payload)
            return
        fmt = self._formats().get(prop)
        if fmt is None:
            self.counters.unknown_props += 1
            self._status(tid, Status.PROP_NOT_FOUND)
            return
        try:
            values = unpack(fmt, payload)
        except SpinelError as exc:
            self.counters.spinel_errors += 1
            log.warning("virtual RCP: SET %s: %s", Prop(prop).name, exc)
            self._status(tid, Status.PARSE_ERROR)
            return
        status = self._apply(prop, values)
        if status != Status.OK:
            self._status(tid, status)
            return
        if prop == Prop.MAC_SCAN_STATE and values[0] == ScanState.ENERGY:
            self._send(tid, Cmd.PROP_VALUE_IS, prop, pack("C", ScanState.ENERGY))
            self._energy_scan()
            return
        self._send(tid, Cmd.PROP_VALUE_IS, prop, pack(fmt, *self._value(prop)))

    def _apply(self, prop: int, values: tuple[Value, ...]) -> Status:
        value = values[0]
        if prop == Prop.PHY_ENABLED:
            self.phy_enabled = bool(value)
        elif prop == Prop.PHY_CHAN:
            if value not in self.channels:
                return Status.INVALID_ARGUMENT
            self.channel = _as_int(value)
            self.medium.set_channel(self, self.channel)
        elif prop == Prop.PHY_TX_POWER:
            self.tx_power_dbm = _as_int(value)
            self.medium.set_tx_power(self, self.tx_power_dbm)
        elif prop == Prop.MAC_RAW_STREAM_ENABLED:
            self.raw_stream = bool(value)
        elif prop == Prop.MAC_15_4_LADDR:
            assert isinstance(value, bytes)
            self.laddr = value
        elif prop == Prop.MAC_PROMISCUOUS_MODE:
            if value not in (0, 1, 2):
                return Status.INVALID_ARGUMENT
            self.promiscuous = _as_int(value)
        elif prop == Prop.MAC_SCAN_MASK:
            assert isinstance(value, list)
            if any(ch not in self.channels for ch in value):
                return Status.INVALID_ARGUMENT
            self.scan_mask = [_as_int(ch) for ch in value]
        elif prop == Prop.MAC_SCAN_PERIOD:
            self.scan_period_ms = _as_int(value)
        elif prop == Prop.MAC_SCAN_STATE:
            if value not in (ScanState.IDLE, ScanState.ENERGY):
                return Status.UNIMPLEMENTED  # beacon scans are the host MAC's job
            if value == ScanState.ENERGY and not self.scan_mask:
                return Status.INVALID_STATE
        else:
            return Status.INVALID_COMMAND_FOR_PROP  # read-only
        return Status.OK

    # --- radio ---------------------------------------------------------------------------------

    def sample_rssi(self, channel: int) -> int:
        """Instantaneous energy on a channel as this board's detector reads it: noise,
        interferers and frames on the air, plus measurement jitter."""
        level = self.medium.node_energy_dbm(self, channel)
        return max(-128, min(127, round(level + self.rng.gauss(0.0, self.rssi_jitter_db))))

    def _energy_scan(self) -> None:
        samples = max(1, min(16, self.scan_period_ms // 16))
        for channel in self.scan_mask:
            peak = max(self.sample_rssi(channel) for _ in range(samples))
            self._send(0, Cmd.PROP_VALUE_IS, Prop.MAC_ENERGY_SCAN_RESULT, pack("Cc", channel, peak))
        self._send(0, Cmd.PROP_VALUE_IS, Prop.MAC_SCAN_STATE, pack("C", ScanState.IDLE))

    def _timestamp_us(self) -> int:
        return int(self.clock.monotonic() * 1_000_000)

    def _noise_floor(self, channel: int) -> int:
        return round(self.medium.noise_floor_dbm(self.medium.position(self), channel))

    def _transmit(self, tid: int, payload: bytes) -> None:
        if not self.phy_enabled:
            self._status(tid, Status.INVALID_STATE)
            return
        try:
            request = decode_tx_request(payload)
        except SpinelError as exc:
            self.counters.spinel_errors += 1
            log.warning("virtual RCP: bad STREAM_RAW transmit request: %s", exc)
            self._status(tid, Status.PARSE_ERROR)
            return
        if not FCS_LEN < len(request.psdu) <= MAX_PSDU or request.channel not in self.channels:
            self._status(tid, Status.INVALID_ARGUMENT)
            return
        if self.cca_failures_to_inject > 0:
            self.cca_failures_to_inject -= 1
            self.counters.cca_failures += 1
            done = TxDone(Status.CCA_FAILURE)
            self._send(tid, Cmd.PROP_VALUE_IS, Prop.LAST_STATUS, encode_tx_done(done))
            return
        if self._tx_busy:
            self.counters.tx_queued += 1
        self._tx_queue.append((tid, request))
        self._next_transmission()

    def _next_transmission(self) -> None:
        """Start the oldest queued request: CSMA-CA on the medium, then the frame; the TX-done
        goes to the host (with the request's TID) when the medium reports the outcome."""
        if self._tx_busy or not self._tx_queue:
            return
        tid, request = self._tx_queue.popleft()
        self._tx_busy = True
        generation = self._generation
        mpdu = request.psdu[:-FCS_LEN]
        on_air = mpdu + struct.pack("<H", fcs154(mpdu))
        ack_requested = bool(mpdu[0] & 0x20)

        def done(outcome: TxOutcome | None) -> None:
            if generation != self._generation:
                return  # the board was reset meanwhile: that request is gone
            self._tx_busy = False
            self._tx_done(tid, request.channel, ack_requested, outcome)
            self._next_transmission()

        csma_transmit(self.medium, self, on_air, request.channel, self.rng, done, self.csma)

    def _tx_done(
        self, tid: int, channel: int, ack_requested: bool, outcome: TxOutcome | None
    ) -> None:
        if outcome is None:
            self.counters.cca_failures += 1
            done = TxDone(Status.CCA_FAILURE)
        else:
            self.counters.frames_tx += 1
            if not ack_requested:
                done = TxDone(Status.OK)
            elif outcome.ack_psdu is None:
                done = TxDone(Status.NO_ACK)
            else:
                ack = RawRxFrame(
                    psdu=outcome.ack_psdu,
                    rssi_dbm=outcome.ack_rssi_dbm,
                    noise_floor_dbm=self._noise_floor(channel),
                    channel=channel,
                    lqi=outcome.ack_lqi,
                    timestamp_us=self._timestamp_us(),
                )
                pending = bool(outcome.ack_psdu[0] & 0x10)
                done = TxDone(Status.OK, frame_pending=pending, ack=ack)
        self._send(tid, Cmd.PROP_VALUE_IS, Prop.LAST_STATUS, encode_tx_done(done))

    def _accepts(self, psdu: bytes) -> bool:
        if self.promiscuous:
            return True
        header = parse_mac_header(psdu[:-FCS_LEN])
        if header is None:
            return False
        return header.dst is None or header.dst in (BROADCAST_SHORT, self.laddr[::-1])

    def on_air_frame(self, psdu: bytes, rssi_dbm: int, lqi: int, channel: int) -> bytes | None:
        """The medium delivers a frame: ack it if it is ours, and stream it to the host."""
        if not self.phy_enabled or channel != self.channel:
            return None
        if not self._accepts(psdu):
            self.counters.frames_filtered += 1
            return None
        ack = self.acker(psdu, self.laddr)
        if ack is not None:
            self.counters.acks_sent += 1
        if self.raw_stream:
            frame = RawRxFrame(
                psdu=psdu,
                rssi_dbm=rssi_dbm,
                noise_floor_dbm=self._noise_floor(channel),
                flags=0,
                channel=channel,
                lqi=lqi,
                timestamp_us=self._timestamp_us(),
            )
            self.counters.frames_to_host += 1
            self._send(0, Cmd.PROP_VALUE_IS, Prop.STREAM_RAW, encode_rx_frame(frame))
        else:
            self.counters.frames_not_streamed += 1
        return ack


def _as_int(value: Value) -> int:
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"expected an integer, got {value!r}")


# --- I/O edge: serve on a PTY --------------------------------------------------------------------


class ByteDevice(Protocol):
    """What :func:`serve_pty` serves: a sans-IO device with bytes in and bytes out (the virtual
    RCP, the virtual TI NCP)."""

    def feed(self, data: bytes) -> None: ...

    def take_output(self) -> bytes: ...

    def set_output_listener(self, listener: Callable[[], None] | None) -> None: ...

    def output_dropped(self, count: int) -> None:
        """``count`` bytes of output were dropped: the host stopped reading."""


async def serve_pty(
    device: ByteDevice, on_ready: Callable[[str], None], *, name: str = "virtual RCP"
) -> None:
    """Serve ``device`` on a new PTY (raw mode) until cancelled; ``on_ready`` gets the slave path.

    We keep the slave end open ourselves so hosts can close and reopen the port without the
    master seeing a hang-up, as with a real board's USB-serial port."""
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    path = os.ttyname(slave)
    pending = bytearray()
    writing = False

    def flush() -> None:
        nonlocal writing
        while pending:
            try:
                written = os.write(master, pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("%s: write to %s failed: %s", name, path, exc)
                pending.clear()
                break
            del pending[:written]
        if pending and not writing:
            loop.add_writer(master, flush)
            writing = True
        elif not pending and writing:
            loop.remove_writer(master)
            writing = False

    def on_output() -> None:
        pending.extend(device.take_output())
        if len(pending) > OUTPUT_LIMIT:
            excess = len(pending) - OUTPUT_LIMIT
            del pending[:excess]
            device.output_dropped(excess)
        flush()

    def on_readable() -> None:
        try:
            data = os.read(master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("%s: read from %s failed: %s", name, path, exc)
            return
        device.feed(data)

    device.set_output_listener(on_output)
    loop.add_reader(master, on_readable)
    try:
        on_output()  # anything queued before we were serving
        on_ready(path)
        await asyncio.Future()
    finally:
        loop.remove_reader(master)
        if writing:
            loop.remove_writer(master)
        device.set_output_listener(None)
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def serve_until_stopped(server: asyncio.Task[None]) -> None:
    """Await a served board until SIGTERM/SIGINT, or until the host that spawned us
    (``spinel+pty://``, which sets ``HIL_RCP_EXIT_ON_STDIN_EOF``) closes our stdin."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.cancel)
    watch_stdin = os.environ.get(WATCH_STDIN_ENV) == "1"
    if watch_stdin:
        os.set_blocking(0, False)
        loop.add_reader(0, _stop_on_eof, server)
    try:
        await server
    except asyncio.CancelledError:
        if not server.cancelled():
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if watch_stdin:
            loop.remove_reader(0)


def _stop_on_eof(server: asyncio.Task[None]) -> None:
    try:
        data = os.read(0, 4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        log.info("host closed our stdin: stopping")
        server.cancel()


class PtyBoard:
    """A virtual RCP served on a fresh PTY that tests can plug in and pull out like a USB board.

    ``plug()`` serves the RCP on a new PTY and returns its path; ``unplug()`` stops serving, so
    the host sees its port vanish. Also an async context manager (plugged inside).
    """

    def __init__(self, rcp: VirtualRcp) -> None:
        self.rcp = rcp
        self.path = ""
        self._server: asyncio.Task[None] | None = None

    @property
    def plugged(self) -> bool:
        return self._server is not None

    async def plug(self) -> str:
        if self._server is not None:
            raise RuntimeError(f"board already plugged in at {self.path}")
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._server = asyncio.create_task(serve_pty(self.rcp, ready.set_result))
        try:
            self.path = await ready
        except BaseException:
            await self.unplug()
            raise
        return self.path

    async def unplug(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cancel()
            await asyncio.wait([server])

    async def __aenter__(self) -> PtyBoard:
        await self.plug()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unplug()
