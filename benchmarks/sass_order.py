"""The order of a GEMV kernel's SASS: where ptxas put the weight loads against the products, barriers and shuffles.

The source of ``gemv.cu``'s split kernels issues the next unit's loads before the current unit's products; whether
the machine code does is ptxas's choice (docs/benchmark_log.md, "Shared memory and the tensor-core GEMV's stream"). This
prints, for each kernel named, its instructions of interest in order, runs of one kind counted (``LDG.E.128.CONSTANT
x4``: four 16-byte weight loads in a row). It needs no GPU: ptxas (pip ``nvidia-cuda-nvcc-cu12``) builds the cubin,
nvdisasm (pip ``nvidia-cuda-nvdisasm``; 13.5 reads ptxas 12.9's sm_90 cubins) disassembles it. The device's driver
compiles the shipped PTX with its own ptxas, which may order it differently: give a ``.cubin`` instead of PTX (the
driver's own compile, ``driver_cubin.py`` on the device) and it is disassembled as it is.

``--step`` prints instead the opcode counts of the tensor-core kernel's loop step (from the branch before its first
MMA to the barrier after it) and how many of them run on the SM's ALU pipe (``ALU_OPCODES``): the nineteenth session
found that pipe bounding the kernel (docs/benchmark_log.md, "The tensor-core GEMV's ALU pipe").

    python benchmarks/sass_order.py mxfp8_xla/backends/gemv.ptx mxfp8_gemv_split_c1_r4_bf16 \\
        --ptxas /path/to/ptxas --nvdisasm /path/to/nvdisasm
    python benchmarks/sass_order.py mxfp8_gemv_mma_r8_bf16.cubin mxfp8_gemv_mma_r8_bf16 --step
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

MARKS = ("LDG.E.128", "F2FP.F16", "HMMA", "SHFL", "BAR.SYNC", "EXIT")
"""Opcodes (prefixes) worth placing: weight loads, E4M3 -> f16 conversions (the products), MMAs, shuffles, barriers."""


ALU_OPCODES = frozenset(
    ("F2FP", "SHF", "LEA", "SEL", "LOP3", "ISETP", "IADD3", "PRMT", "IMNMX", "VIMNMX", "FSEL", "FSETP", "PLOP3", "MOV",
     "FMNMX")
)  # fmt: skip
"""Opcodes (their first word) on the ALU pipe, as Nsight Compute describes it: integer and logic instructions but
IMAD and IMUL, compares, selects, moves, and on Ampere and later the F2FP conversions: our reading, not a spec."""


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


def opcodes(sass: str) -> list[str]:
    """Each instruction's opcode up to its first dot, in order (``LDG`` for ``LDG.E.128.CONSTANT``), no predicates."""
    return re.findall(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M)


def step_counts(sass: str) -> Counter:
    """Opcode counts of the tensor-core kernel's loop step: from the last branch before its first MMA to the first
    barrier after it."""
    ops = opcodes(sass)
    first = ops.index("HMMA")
    start = max(i for i in range(first) if ops[i] == "BRA")
    end = next(i for i in range(first, len(ops)) if ops[i] == "BAR")
    return Counter(ops[start:end])


def disassemble(path: Path, ptxas: str, nvdisasm: str) -> str:
    """``nvdisasm -c`` of a cubin, or of ptxas's sm_90 build of a PTX file."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = path
        if path.suffix != ".cubin":
            cubin = Path(tmp) / "k.cubin"
            subprocess.run([ptxas, "-arch=sm_90", str(path), "-o", str(cubin)], check=True)
        return subprocess.run([nvdisasm, "-c", str(cubin)], check=True, capture_output=True, text=True).stdout


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ptx", type=Path, help="a PTX file (built here by ptxas) or a .cubin (disassembled as it is)")
    parser.add_argument("kernels", nargs="+")
    parser.add_argument("--ptxas", default="ptxas")
    parser.add_argument("--nvdisasm", default="nvdisasm")
    parser.add_argument("--step", action="store_true", help="the tensor-core kernel's step: opcode counts, ALU pipe")
    args = parser.parse_args()
    sass = disassemble(args.ptx, args.ptxas, args.nvdisasm)
    for name in args.kernels:
        if args.step:
            counts = step_counts(kernel_sass(sass, name))
            alu = sum(n for op, n in counts.items() if op in ALU_OPCODES)
            top = " ".join(f"{op} {n}" for op, n in counts.most_common())
            print(f"{name}: step {counts.total()} instructions, {alu} on the ALU pipe: {top}")
        else:
            print(name + ": " + "  ".join(f"{op} x{n}" if n > 1 else op for op, n in order(kernel_sass(sass, name))))
