"""Command line: ``python -m mxfp8_xla [demo|info|inspect PATH]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand ``argv`` names (default: the demo); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mxfp8_xla", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="quantize a random layer and run the emulation matmul (default)")
    sub.add_parser("info", help="devices, versions, and which backends are usable here")
    inspect = sub.add_parser("inspect", help="summarize a ModelOpt MXFP8 checkpoint directory")
    inspect.add_argument("path")
    args = parser.parse_args(argv)

    if args.command in (None, "demo"):
        from mxfp8_xla.demo import main as demo_main

        return demo_main()
    if args.command == "info":
        from mxfp8_xla.info import main as info_main

        return info_main()
    from mxfp8_xla.checkpoint import inspect_main

    return inspect_main(args.path)


if __name__ == "__main__":
    sys.exit(main())
