"""``python -m hil.wsbrd --bus ADDRESS --nodes FILE.yaml``: run the emulated wsbrd until
interrupted (``--bus private`` starts a private dbus-daemon and prints its address first)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from .bus import PrivateBus
from .nodes_file import NodesFileError, model_from_text
from .service import serve_wsbrd


async def serve(address: str, nodes: Path, signal_values: bool) -> None:
    model = model_from_text(nodes.read_text())
    service = await serve_wsbrd(address, model, signal_values=signal_values)
    print(f"emulated wsbrd on {address}: {len(model.nodes)} nodes", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await service.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.wsbrd", description=__doc__)
    parser.add_argument("--bus", required=True, help="a D-Bus address, or 'private'")
    parser.add_argument("--nodes", type=Path, required=True, help="the network (YAML)")
    parser.add_argument(
        "--signal-values", action="store_true", help="send values in PropertiesChanged"
    )
    args = parser.parse_args(argv)
    try:
        model_from_text(args.nodes.read_text())  # fail before touching any bus
    except (OSError, NodesFileError) as exc:
        print(f"hil.wsbrd: {args.nodes}: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        address = args.bus
        if address == "private":
            address = stack.enter_context(PrivateBus()).address
            print(f"DBUS_ADDRESS={address}", flush=True)
        asyncio.run(serve(address, args.nodes, args.signal_values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
