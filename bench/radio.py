"""radio: Spinel frames through the UART driver over a PTY pair, against raw os.write/os.read.

Both sides talk to the same peer: a separate process on the PTY master that echoes every byte
back unchanged, so the peer costs the same in both runs and measures nothing Spinel-specific (the
virtual RCP is deliberately not in the loop: its throughput is not the driver's).

- raw: the HDLC-framed bytes of the frames, encoded before the clock starts, are written with
  one ``os.write`` per frame on the PTY slave (raw mode) and read back with ``os.read`` until the
  byte count matches: the cost of the syscalls and the PTY alone.
- driver: what the host does per Spinel frame in production, through its public entry points:
  ``drivers.spinel.encode`` (the STREAM_RAW frame), ``HdlcFrameTransport`` over ``SerialTransport``
  (pyserial on the same PTY, driven by the event loop) to send it and to receive the echo, then
  ``decode_frame`` + ``decode_rx_frame`` on what came back (checked against what was sent).

Frames are STREAM_RAW received-frame values with a 127-byte PSDU (an 802.15.4 frame at its
classic size) and seeded random content, so HDLC escaping occurs as often as on real traffic.
Both runs keep the same number of frames in flight. ratio = driver frames/s ÷ raw frames/s
(bytes/s ratio is the same: the same bytes cross the PTY).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
import tty
from collections.abc import Iterator

from drivers.framing import HdlcFrameTransport
from drivers.hdlc import hdlc_encode
from drivers.spinel import (
    Cmd,
    Prop,
    RawRxFrame,
    decode_frame,
    decode_rx_frame,
    encode,
    encode_rx_frame,
)
from drivers.uart import SerialTransport

FRAMES = 20_000
WINDOW = 8  # frames in flight (a few KiB: well inside the PTY's buffers both ways)
ROUNDS = 5  # alternate raw/driver, keep each one's best (the machines are shared and noisy)
TARGET = 0.5


def make_payloads(n: int, rng: random.Random) -> list[bytes]:
    """STREAM_RAW values as an RCP sends them for received 127-byte frames."""
    return [
        encode_rx_frame(
            RawRxFrame(
                psdu=rng.randbytes(127),
                rssi_dbm=rng.randint(-100, -40),
                channel=rng.randint(0, 128),
                lqi=rng.randint(1, 255),
                timestamp_us=rng.getrandbits(48),
            )
        )
        for _ in range(n)
    ]


ECHO = """
import os, sys
master = int(sys.argv[1])
while True:
    try:
        data = os.read(master, 65536)
    except OSError:  # EIO: every slave descriptor is closed
        break
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(master, view):]
"""


@contextlib.contextmanager
def echo_pty() -> Iterator[str]:
    """A PTY pair whose master end echoes every byte back; yields the slave's path.

    The echo runs in its own process, as a board is its own device: a thread here would take
    the GIL from whichever side is being measured, and more from the side that computes more."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    echo = subprocess.Popen([sys.executable, "-c", ECHO, str(master)], pass_fds=(master,))
    os.close(master)
    try:
        yield path
    finally:
        os.close(slave)
        try:
            echo.wait(timeout=5)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait()


def run_raw(path: str, wire: list[bytes]) -> float:
    """Seconds to write ``wire`` frame by frame and read all of it back, bare syscalls."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    total = sum(len(w) for w in wire)
    window_bytes = WINDOW * max(len(w) for w in wire)
    received = sent = 0
    started = time.perf_counter()
    for chunk in wire:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        sent += len(chunk)
        while sent - received > window_bytes:
            received += len(os.read(fd, 4096))
    while received < total:
        received += len(os.read(fd, 4096))
    elapsed = time.perf_counter() - started
    os.close(fd)
    return elapsed


async def run_driver(path: str, payloads: list[bytes]) -> float:
    """Seconds to encode, send, receive and decode every frame through the driver's transport."""
    link = HdlcFrameTransport(SerialTransport(path, baudrate=921600))
    await link.open()
    # The window as two counters and an event (a semaphore costs more per frame than the
    # raw loop's byte counters, and that cost is the harness's, not the driver's).
    sent = received = 0
    freed = asyncio.Event()
    started = time.perf_counter()

    async def sender() -> None:
        nonlocal sent
        for i, value in enumerate(payloads):
            while sent - received >= WINDOW:
                freed.clear()
                await freed.wait()
            await link.send_frame(encode(i % 15 + 1, Cmd.PROP_VALUE_IS, Prop.STREAM_RAW, value))
            sent += 1

    async def receiver() -> None:
        nonlocal received
        for i, value in enumerate(payloads):
            item = await link.recv_frame()
            if not isinstance(item, bytes):
                raise RuntimeError(f"frame {i} came back broken: {item}")
            frame = decode_frame(item)
            rx = decode_rx_frame(frame.payload)
            if frame.tid != i % 15 + 1 or frame.payload != value or len(rx.psdu) != 127:
                raise RuntimeError(f"frame {i} came back different")
            received += 1
            freed.set()

    await asyncio.gather(sender(), receiver())
    elapsed = time.perf_counter() - started
    link.close()
    await link.wait_closed()
    return elapsed


async def run_transport(path: str, wire: list[bytes]) -> float:
    """For the breakdown only: the pre-encoded bytes through ``SerialTransport`` alone (event
    loop + pyserial, no HDLC or Spinel work), to tell the I/O share of the cost from the codecs'."""
    port = SerialTransport(path, baudrate=921600)
    await port.open()
    total = sum(len(w) for w in wire)
    window_bytes = WINDOW * max(len(w) for w in wire)
    received = sent = 0
    started = time.perf_counter()
    for chunk in wire:
        await port.write(chunk)
        sent += len(chunk)
        while sent - received > window_bytes:
            received += len(await port.read())
    while received < total:
        received += len(await port.read())
    elapsed = time.perf_counter() - started
    port.close()
    await port.wait_closed()
    return elapsed


def main() -> None:
    payloads = make_payloads(FRAMES, random.Random(4))
    wire = [
        hdlc_encode(encode(i % 15 + 1, Cmd.PROP_VALUE_IS, Prop.STREAM_RAW, value))
        for i, value in enumerate(payloads)
    ]
    wire_bytes = sum(len(w) for w in wire)
    raw_s: list[float] = []
    our_s: list[float] = []
    io_s: list[float] = []
    for _ in range(ROUNDS):
        with echo_pty() as path:
            raw_s.append(run_raw(path, wire))
        with echo_pty() as path:
            our_s.append(asyncio.run(run_driver(path, payloads)))
        with echo_pty() as path:
            io_s.append(asyncio.run(run_transport(path, wire)))
    raw, ours, io = min(raw_s), min(our_s), min(io_s)
    print(
        f"frames: {FRAMES} STREAM_RAW values of {len(payloads[0])} bytes, "
        f"{wire_bytes / FRAMES:.1f} bytes each on the wire, {WINDOW} in flight"
    )
    print(f"raw os.write/os.read: {FRAMES / raw:,.0f} frames/s, {wire_bytes / raw / 1e6:.2f} MB/s")
    print(f"UART driver: {FRAMES / ours:,.0f} frames/s, {wire_bytes / ours / 1e6:.2f} MB/s")
    print(
        f"  of which SerialTransport alone (no codecs): {FRAMES / io:,.0f} frames/s, "
        f"{wire_bytes / io / 1e6:.2f} MB/s"
    )
    print(f"radio: ratio {raw / ours:.2f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
