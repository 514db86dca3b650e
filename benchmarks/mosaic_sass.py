"""What the shipped Mosaic GPU kernel (``hopper_mosaic``) executes per step: its machine code, counted.

On the device: ``PYTHONPATH=. python3 benchmarks/mosaic_sass.py [--rows M] [N,K ...]`` compiles and runs the
kernel once per shape (M rows, 16 unless given; the backend's own config) with Mosaic GPU's PTX and ptxas dumps
on (and its SASS dump, which needs ``nvdisasm`` on PATH: the H200 image has none) and packs
them into ``$OUT/mosaic_sass.tar.gz``.

Anywhere: ``python3 benchmarks/mosaic_sass.py --count FILE.ptx|FILE.sass ...`` assembles a PTX
dump for sm_90a with ``ptxas`` (``$PTXAS`` or PATH), disassembles it with ``cuobjdump``
(``$CUOBJDUMP`` or PATH; it needs ``nvdisasm`` on PATH; pip's ``nvidia-cuda-cuobjdump`` and
``nvidia-cuda-nvdisasm`` have both), and prints the instruction mix of the smallest loop that
holds the ``HGMMA`` instructions: one pipeline step of a compute warpgroup.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*(\.L\w+):", re.M)
Instruction = tuple[int, str, str]  # address, opcode with modifiers, operands


def parse_sass(text: str) -> tuple[list[Instruction], dict[str, int]]:
    """The instructions of a ``cuobjdump``/``nvdisasm`` listing, and the address each label (``.L_x_3:``) precedes."""
    instructions = [(int(m.group(1), 16), m.group(3), m.group(4).strip()) for m in _SASS_LINE.finditer(text)]
    labels = {}
    for m in _LABEL.finditer(text):
        following = _SASS_LINE.search(text, m.end())
        if following:
            labels[m.group(1)] = int(following.group(1), 16)
    return instructions, labels


def loops(instructions: list[Instruction], labels: dict[str, int]) -> list[tuple[int, int]]:
    """``(first, last)`` instruction indices of each loop: a branch back to an address at or before it."""
    index = {addr: i for i, (addr, _, _) in enumerate(instructions)}
    found = []
    for i, (addr, op, operands) in enumerate(instructions):
        if not op.startswith("BRA"):
            continue
        label = re.search(r"(\.L\w+)", operands)
        number = re.search(r"0x([0-9a-f]+)", operands)
        target = labels.get(label.group(1)) if label else int(number.group(1), 16) if number else None
        if target is not None and target <= addr and target in index:
            found.append((index[target], i))
    return found


def mix(instructions: list[Instruction]) -> collections.Counter:
    """How many of each base opcode (``HMUL2.BF16_V2`` counts as ``HMUL2``)."""
    return collections.Counter(op.split(".")[0] for _, op, _ in instructions)


def step_loop(text: str) -> tuple[list[Instruction], list[Instruction]]:
    """The whole kernel's instructions and those of the smallest loop holding every ``HGMMA``."""
    ins, labels = parse_sass(text)
    mma = {i for i, (_, op, _) in enumerate(ins) if op.startswith("HGMMA")}
    holding = [(first, last) for first, last in loops(ins, labels) if mma and all(first <= i <= last for i in mma)]
    if not holding:
        raise ValueError("no loop holds every HGMMA instruction")
    first, last = min(holding, key=lambda fl: fl[1] - fl[0])
    return ins, ins[first : last + 1]


def report(text: str) -> str:
    """The step loop's length and instruction mix, largest counts first."""
    ins, body = step_loop(text)
    counts = mix(body)
    return f"{len(ins)} instructions in the kernel; the step loop holds {len(body)}: " + ", ".join(
        f"{op} {n}" for op, n in counts.most_common()
    )


def sass_of(path: Path) -> str:
    """A SASS listing as text; a ``.ptx`` file is first assembled for sm_90a."""
    if path.suffix != ".ptx":
        return path.read_text(errors="replace")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        subprocess.run([os.environ.get("PTXAS", "ptxas"), "-arch=sm_90a", str(path), "-o", str(cubin)], check=True)
        return subprocess.run(
            [os.environ.get("CUOBJDUMP", "cuobjdump"), "-sass", str(cubin)], check=True, capture_output=True, text=True
        ).stdout


def dump_on_device(shapes: list[tuple[int, int]], m: int) -> None:
    """Compile and run the shipped kernel at ``shapes`` for ``m`` activation rows with Mosaic GPU's dumps on; pack
    the dumps."""
    dump = Path(tempfile.mkdtemp(prefix="mosaic_dump_"))
    for var in ("MOSAIC_GPU_DUMP_PTX", "MOSAIC_GPU_DUMP_SASS", "MOSAIC_GPU_DUMP_PTXAS"):
        os.environ[var] = "1"
    os.environ["MOSAIC_GPU_DUMP_TO"] = str(dump)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import mxfp8_xla as mx
    from mxfp8_xla.backends import hopper, hopper_mosaic

    for n, k in shapes:
        rng = np.random.default_rng(0)
        w = mx.quantize(jnp.asarray(rng.standard_normal((n, k), np.float32) * 0.02, jnp.bfloat16))
        x = jnp.asarray(rng.standard_normal((m, k), np.float32), jnp.bfloat16)
        cfg = hopper.mosaic_kernel_config(m, n, k)
        print(f"== N={n} K={k} M={m}: {cfg}", flush=True)
        jax.block_until_ready(jax.jit(lambda x, w, cfg=cfg: hopper_mosaic.matmul_2d(x, w, jnp.bfloat16, cfg))(x, w))
    print("dumped:", sorted(p.name for p in dump.iterdir()), flush=True)
    with tarfile.open(Path(os.environ.get("OUT", ".")) / "mosaic_sass.tar.gz", "w:gz") as tar:
        tar.add(dump, arcname="mosaic_dump")


def main() -> None:
    if sys.argv[1:2] == ["--count"]:
        for name in sys.argv[2:]:
            print(f"== {name}\n{report(sass_of(Path(name)))}")
        return
    args = sys.argv[1:]
    m = 16
    if args[:1] == ["--rows"]:
        m, args = int(args[1]), args[2:]
    dump_on_device([tuple(map(int, a.split(","))) for a in args] or [(4096, 14336), (14336, 4096)], m)


if __name__ == "__main__":
    main()
