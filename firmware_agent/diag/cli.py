"""``hes-diag``: the field technician's tool. Runs on a laptop with the base install only.

The diag API it talks to and its commands (--check-snr, view-mesh, mesh) come with the diag
issue; until then every command says so plainly and exits 2, rather than pretending.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

EXIT_UNREACHABLE = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hes-diag", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"hes-diag {version('wisun-gateway')}"
    )
    parser.add_argument(
        "--check-snr", metavar="GATEWAY", help="check every mesh link's SNR on GATEWAY"
    )
    args = parser.parse_args(argv)
    if args.check_snr is None:
        parser.print_help()
        return EXIT_UNREACHABLE
    print(
        f"hes-diag: cannot check {args.check_snr}: this build has no diag API client yet",
        file=sys.stderr,
    )
    return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
