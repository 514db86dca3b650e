"""Probe: how fast train mode's weight quantization can run, ``quantize(kernel [K, N], axis=0)`` to an MXArray
``[N, K]`` (blocks of 32 along K), against copy bandwidth and bf16's transpose in the same run.

Train mode quantizes its float kernel every step; on an H200 (twenty-fourth session, ``grad_speed_probe.py --mode
train``) the STE's forward took ~175-200 us at one row against 27-31 us for the inference product, which reads the
weight already quantized. The variants, all bit-equal to ``mx.quantize`` (checked here):

- ``xla``: ``mx.quantize(kernel, axis=0)``, jnp (XLA fuses the move of K last into its pass);
- ``transpose_first``: ``kernel.T`` in its own XLA transpose (behind an optimization barrier), then the row-wise pass;
- ``in_place``: the blocks reduced and scaled in the kernel's own layout (``quantize_blocks(..., axis=1)`` on
  ``[K/32, 32, N]``), then the 1-byte codes and the scales transposed, XLA free to fuse as it likes;
- ``in_place_barrier``: the same with an optimization barrier before the transposes (two separate passes);
- ``pallas_BKxBNwW``: ``pallas_quantize.quantize_transposed_2d`` (the hopper backend's train-mode quantizer) with
  ``[BK, BN]`` tiles and W warps: it loads a tile of the kernel (coalesced along N), transposes it in registers,
  quantizes it with ``numerics.quantize_blocks`` and stores ``[BN, BK]`` codes. The first run (twenty-fourth session,
  call 2) tried a copy of it without masks at 128x64, 64x128, 32x128 and 128x128, four warps.

Two references: ``bf16_transpose`` (XLA's transpose of the kernel, its bytes read and written) and ``rowwise``
(``quantize`` of a kernel already stored ``[N, K]``: the same pass with no transpose in it).

Device time, ``timing.loop_time`` (or with ``--timer queued`` ``timing.device_time``) over operand sets rotated past
L2. Usage: PYTHONPATH=. python3 benchmarks/weight_quantize_probe.py [--dtypes bfloat16,float32] [--iters 20]
[--skip in_place] [--timer queued];
JSON to $OUT/weight_quantize_probe.json.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import (  # noqa: E402
    add_timer_option,
    copy_bandwidth,
    environment,
    rotation_copies,
    same_bytes,
    timer,
    write_json,
)

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla import numerics  # noqa: E402
from mxfp8_xla.backends import pallas_quantize  # noqa: E402

SHAPES = [(4096, 14336), (14336, 4096), (4096, 4096), (4096, 6144)]
"""Kernels ``[K, N]`` of Llama-3-8B's layers."""


def transpose_first(kernel: jax.Array) -> mx.MXArray:
    return mx.quantize(jax.lax.optimization_barrier(kernel.T))


def in_place(kernel: jax.Array, barrier: bool = False) -> mx.MXArray:
    k, n = kernel.shape
    blocks = kernel.astype(jnp.float32).reshape(k // numerics.BLOCK_SIZE, numerics.BLOCK_SIZE, n)
    data, scale = numerics.quantize_blocks(blocks, axis=1)  # [K/32, 32, N], [K/32, N]
    if barrier:
        data, scale = jax.lax.optimization_barrier((data, scale))
    return mx.MXArray(data=data.reshape(k, n).T, scale=scale.T)


INTERPRET = jax.default_backend() != "gpu"
"""Off the GPU the Pallas variant runs in interpret mode (its CPU check)."""
TILES = ((32, 64, 4), (32, 128, 2), (32, 128, 4), (32, 128, 8), (32, 256, 4), (32, 256, 8), (64, 128, 4))
"""``(BK, BN, warps)`` of the Pallas variant; the library's ``quantize_transposed_2d`` defaults to (32, 128, 4)."""

VARIANTS = {
    "xla": lambda kernel: mx.quantize(kernel, axis=0),
    "transpose_first": transpose_first,
    "in_place": in_place,
    "in_place_barrier": lambda kernel: in_place(kernel, barrier=True),
    **{
        f"pallas_{bk}x{bn}w{warps}": functools.partial(
            pallas_quantize.quantize_transposed_2d, bk=bk, bn=bn, num_warps=warps, interpret=INTERPRET
        )
        for bk, bn, warps in TILES
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--skip", default="", help="comma-separated variants not to run (xla always runs)")
    add_timer_option(ap)
    args = ap.parse_args()
    timed = timer(args.timer)
    skip = set(filter(None, args.skip.split(","))) - {"xla"}
    copy = copy_bandwidth()
    out = {"env": environment(), "copy_bytes_per_s": copy, "rows": []}
    print(out["env"], f"copy bandwidth {copy / 1e12:.2f} TB/s", flush=True)
    names = ["bf16_transpose", "rowwise", *(v for v in VARIANTS if v not in skip)]
    print(f"{'K':>6} {'N':>6} {'dtype':>8} " + " ".join(f"{v:>16}" for v in names) + "  (us; % of copy bandwidth)")
    for dtype in args.dtypes.split(","):
        for k, n in SHAPES:
            nbytes = k * n * jnp.dtype(dtype).itemsize
            sets = [(jax.random.normal(jax.random.key(i), (k, n), dtype),) for i in range(rotation_copies(nbytes, 2))]
            stored_nk = [(jnp.asarray(kernel.T),) for (kernel,) in sets]
            want = jax.jit(VARIANTS["xla"])(sets[0][0])
            row = {"k": k, "n": n, "dtype": dtype}
            moved = nbytes + k * n * (1 + 1 / numerics.BLOCK_SIZE)  # read the kernel, write codes and scales
            for name in names:
                fn = {"bf16_transpose": lambda kernel: kernel.T, "rowwise": mx.quantize}.get(name) or VARIANTS[name]
                if name in VARIANTS:
                    got = jax.jit(fn)(sets[0][0])
                    row[f"{name}_equal"] = same_bytes(got, want)
                row[f"{name}_us"] = timed(fn, stored_nk if name == "rowwise" else sets, iters=args.iters) * 1e6
                traffic = 2 * nbytes if name == "bf16_transpose" else moved
                row[f"{name}_copy_share"] = traffic / (row[f"{name}_us"] * 1e-6) / copy
            out["rows"].append(row)
            write_json("weight_quantize_probe.json", out)
            cells = " ".join(
                f"{row[f'{v}_us']:8.1f} ({100 * row[f'{v}_copy_share']:3.0f}%)"
                + ("" if row.get(f"{v}_equal", True) else " NOT EQUAL")
                for v in names
            )
            print(f"{k:6d} {n:6d} {dtype:>8} {cells}", flush=True)


if __name__ == "__main__":
    main()
