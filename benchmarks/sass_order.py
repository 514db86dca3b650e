"""The order of a GEMV kernel's SASS: where ptxas put the weight loads against the products, barriers and shuffles.

The source of ``gemv.cu``'s split kernels issues the next unit's loads before the current unit's products; whether
the machine code does is ptxas's choice (docs/benchmarks.md, "Shared memory and the tensor-core GEMV's stream"). This
prints, for each kernel named, its instructions of interest in order, runs of one kind counted (``LDG.E.128.CONSTANT
x4``: four 16-byte weight loads in a row). It needs no GPU: ptxas (pip ``nvidia-cuda-nvcc-cu12``) builds the cubin,
nvdisasm (pip ``nvidia-cuda-nvdisasm``; 13.5 reads ptxas 12.9's sm_90 cubins) disassembles it. The device's driver
compiles the shipped PTX with its own ptxas, which may order it differently.

    python benchmarks/sass_order.py mxfp8_xla/backends/gemv.ptx mxfp8_gemv_split_c1_r4_bf16 \\
        --ptxas /path/to/ptxas --nvdisasm /path/to/nvdisasm
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

MARKS = ("LDG.E.128", "F2FP.F16", "HMMA", "SHFL", "BAR.SYNC", "EXIT")
"""Opcodes (prefixes) worth placing: weight loads, E4M3 -> f16 conversions (the products), MMAs, shuffles, barriers."""


def kernel_sass(sass: str, name: str) -> str:
    """The section of ``nvdisasm -c`` output that holds kernel ``name``."""
    start = sass.index(f".text.{name}:")
    end = sass.find("\n.text.", start + 1)
    return sass[start : end if end >= 0 else len(sass)]


def order(sass: str, marks: tuple[str, ...] = MARKS) -> list[tuple[str, int]]:
    """The instructions of ``sass`` whose opcode starts with one of ``marks``, in order, as (opcode, run length)."""
    runs: list[tuple[str, int]] = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if not m or not m.group(1).startswith(marks):
            continue
        op = m.group(1)
        runs[-1:] = [(op, runs[-1][1] + 1)] if runs and runs[-1][0] == op else [*runs[-1:], (op, 1)]
    return runs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ptx", type=Path)
    parser.add_argument("kernels", nargs="+")
    parser.add_argument("--ptxas", default="ptxas")
    parser.add_argument("--nvdisasm", default="nvdisasm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        subprocess.run([args.ptxas, "-arch=sm_90", str(args.ptx), "-o", str(cubin)], check=True)
        sass = subprocess.run([args.nvdisasm, "-c", str(cubin)], check=True, capture_output=True, text=True).stdout
    for name in args.kernels:
        print(name + ": " + "  ".join(f"{op} x{n}" if n > 1 else op for op, n in order(kernel_sass(sass, name))))
