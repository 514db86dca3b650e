"""Build a variant of the library's ``gemv.cu`` for an A/B on the device (``cuda_gemv_probe.py --route --ptx``).

Each substitution ``OLD=>NEW`` replaces the one occurrence of OLD in the source (it must occur exactly once); the
result is compiled as ``gemv.ptx`` is (:func:`mxfp8_xla.backends.cuda_gemv.build_ptx`, NVRTC), written to OUT, and, with
``--ptxas PATH``, its tensor-core kernels' registers and spills are printed. ``--source`` takes another file (e.g. an
earlier commit's, ``git show 5dd9587:mxfp8_xla/backends/gemv.cu``), ``-D`` adds preprocessor definitions, each
``--variant`` (repeatable, applied in order) applies the substitutions of a ``benchmarks/variants/*.json`` file
(``{"about": ..., "base": COMMIT, "substitutions": [[OLD, NEW], ...]}``) before the command line's. A variant's
``base`` names the commit whose ``gemv.cu`` it was written against and measured on; without ``--source`` that
commit's file is the one varied (``git show``), so a variant stays the experiment it was after the library moves on.

    python benchmarks/gemv_variant_ptx.py ab/noalloc.ptx \\
        "ld.global.nc.v4.u32=>ld.global.nc.L1::no_allocate.v4.u32" --ptxas /path/to/ptxas
    python benchmarks/gemv_variant_ptx.py ab/ring_d2.ptx --source ring.cu -D MXFP8_GEMV_MMA_DEPTH=2
    python benchmarks/gemv_variant_ptx.py ab/mma_ahead2.ptx --variant benchmarks/variants/mma_act_smem.json \\
        --variant benchmarks/variants/mma_ahead2.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

from mxfp8_xla.backends import cuda_gemv


def variant_source(source: str, substitutions: list[str | tuple[str, str]]) -> str:
    """``source`` with each ``OLD=>NEW`` (or ``(OLD, NEW)``) applied; OLD must occur exactly once."""
    for spec in substitutions:
        old, sep, new = (spec[0], "=>", spec[1]) if not isinstance(spec, str) else spec.partition("=>")
        if not sep:
            raise ValueError(f"substitution {spec!r}: expected OLD=>NEW")
        if source.count(old) != 1:
            raise ValueError(f"substitution {spec!r}: OLD occurs {source.count(old)} times, expected once")
        source = source.replace(old, new)
    return source


def variant_substitutions(*variants: Path) -> list[tuple[str, str]]:
    """The ``(OLD, NEW)`` pairs of ``benchmarks/variants/*.json`` files, in order."""
    return [tuple(pair) for variant in variants for pair in json.loads(variant.read_text())["substitutions"]]


def variant_base_source(*variants: Path) -> str:
    """The ``gemv.cu`` the variants apply to: their ``base`` commit's (one for all of them; ``git show``), or the
    library's own where none names one."""
    bases = {json.loads(variant.read_text()).get("base") for variant in variants} - {None}
    if len(bases) > 1:
        raise ValueError(f"variants {[str(v) for v in variants]} name different base commits {sorted(bases)}")
    if not bases:
        return cuda_gemv.SOURCE.read_text()
    root = Path(__file__).resolve().parent.parent
    path = cuda_gemv.SOURCE.relative_to(root).as_posix()
    return subprocess.run(
        ["git", "show", f"{bases.pop()}:{path}"], cwd=root, capture_output=True, text=True, check=True
    ).stdout


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the PTX")
    parser.add_argument("substitutions", nargs="*", help="OLD=>NEW, applied in order")
    parser.add_argument("--ptxas", help="a ptxas for sm_90: print the tensor-core kernels' registers and spills")
    parser.add_argument("--source", type=Path, help="the source to vary (default: the variants' base, else gemv.cu)")
    parser.add_argument("-D", dest="defines", action="append", default=[], help="NAME=VALUE, a preprocessor definition")
    parser.add_argument(
        "--variant", type=Path, action="append", default=[], help="a benchmarks/variants/*.json file (repeatable)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "gemv.cu"
        source.write_text(
            variant_source(
                args.source.read_text() if args.source else variant_base_source(*args.variant),
                [*variant_substitutions(*args.variant), *args.substitutions],
            )
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(cuda_gemv.build_ptx(source, tuple(args.defines)))
    print(f"wrote {args.out}")
    if args.ptxas:
        report = subprocess.run(
            [args.ptxas, "-arch=sm_90", "-v", str(args.out), "-o", "/dev/null"], capture_output=True, text=True
        ).stderr
        for m in re.finditer(r"entry function '(mxfp8_gemv_mma\w*)'.*?\n.*?\n(.*?)\n(.*?)\n", report):
            print(m.group(1), m.group(2).strip(), "|", m.group(3).strip())
