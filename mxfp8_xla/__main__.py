"""Command line: ``python -m mxfp8_xla [demo|info|inspect PATH|build-ptx]``."""

from __future__ import annotations

import argparse
import os
import sys

SIGPIPE_STATUS = 141
"""The exit status of a command whose reader closed the pipe early (``| head``): 128 + SIGPIPE, as a shell reports
a process that SIGPIPE killed (``yes | head``)."""


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand ``argv`` names (default: the demo); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mxfp8_xla", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="quantize a random layer and run the emulation matmul (default)")
    sub.add_parser("info", help="devices, versions, and which backends are usable here")
    inspect = sub.add_parser("inspect", help="summarize a ModelOpt MXFP8 checkpoint directory")
    inspect.add_argument("path")
    sub.add_parser("build-ptx", help="rebuild the hopper backend's gemv.ptx from gemv.cu (NVRTC 12.1, the test extra)")
    args = parser.parse_args(argv)

    if args.command in (None, "demo"):
        from mxfp8_xla.demo import main as demo_main

        return demo_main()
    if args.command == "info":
        from mxfp8_xla.info import main as info_main

        return info_main()
    if args.command == "build-ptx":
        from mxfp8_xla.backends import cuda_gemv

        cuda_gemv.PTX.write_text(cuda_gemv.build_ptx())
        print(f"wrote {cuda_gemv.PTX}")
        return 0
    from mxfp8_xla.checkpoint import inspect_main

    return inspect_main(args.path)


def cli() -> int:
    """:func:`main` as a command: when the reader of stdout stops early (``| head``), end quietly.

    The recipe of Python's documentation (the ``signal`` module, "Note on SIGPIPE"): Python ignores SIGPIPE, so a
    write to a closed pipe raises ``BrokenPipeError``; stdout is pointed at devnull so that the interpreter's final
    flush does not raise again, and the exit status is the one of a process that SIGPIPE ended.
    """
    try:
        status = main()
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_STATUS
    return status


if __name__ == "__main__":
    sys.exit(cli())
