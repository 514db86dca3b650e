"""Activation quantization throughput against device copy bandwidth.

Bytes moved per element: 2 (bf16 read) + 1 (fp8 write) + 1/32 (scale write).
Variants: ``xla`` is ``mxfp8_xla.quantize`` under jit (XLA fuses it); ``pallas`` is
the one-pass Pallas/Triton kernel (GPU only). Both produce identical bytes (checked).
Timed with ``timing.loop_time`` (a jitted loop over 8 input sets); the H100 results in
``results/bench_quantize_h100.json`` used the queued timer, ``timing.device_time``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import copy_bandwidth, environment, failure, loop_time, same_bytes, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import pallas_quantize  # noqa: E402

SHAPES = [(16, 4096), (2048, 4096), (4096, 4096), (8192, 14336)]
SETS = 8


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options: --help, and no typos
    env = environment()
    bw = copy_bandwidth()
    print(f"{env}  copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    out = {"env": env, "copy_bytes_per_s": bw, "rows": []}
    variants = {
        "xla": mx.quantize,
        "pallas": pallas_quantize.quantize_2d,
        "pallas_bm64": lambda x: pallas_quantize.quantize_2d(x, bm=64, bk=128),
        "tile_16x256": lambda x: pallas_quantize.quantize_2d(x, bm=16, bk=256, tile=True),  # shipped
        "tile_32x256": lambda x: pallas_quantize.quantize_2d(x, bm=32, bk=256, tile=True),
        "tile_64x256w8": lambda x: pallas_quantize.quantize_2d(x, bm=64, bk=256, num_warps=8, tile=True),
        "tile_16x512": lambda x: pallas_quantize.quantize_2d(x, bm=16, bk=512, tile=True),
    }
    print(f"{'M':>6} {'K':>6} " + " ".join(f"{v:>22}" for v in variants) + "  (us, TB/s, % of copy)")
    for m, k in SHAPES:
        xs = [(jax.random.normal(jax.random.key(i), (m, k), jnp.bfloat16) * 3,) for i in range(SETS)]
        want = jax.jit(mx.quantize)(xs[0][0])
        row = {"m": m, "k": k}
        cells = []
        for name, fn in variants.items():
            try:
                got = jax.jit(fn)(xs[0][0])
                same = same_bytes(got, want)
                t = loop_time(fn, xs)
            except Exception as e:  # noqa: BLE001 - a benchmark reports every failure and goes on
                row[name] = {"error": failure(e)}
                cells.append("n/a")
                continue
            moved = m * k * (2 + 1 + 1 / 32)
            row[name] = {
                "us": t * 1e6,
                "tb_per_s": moved / t / 1e12,
                "frac_copy": moved / t / bw,
                "bit_exact": same,
            }
            cells.append(f"{t * 1e6:7.1f} {moved / t / 1e12:4.2f} {100 * moved / t / bw:3.0f}%{'' if same else '!'}")
        print(f"{m:6d} {k:6d} " + " ".join(f"{c:>22}" for c in cells), flush=True)
        out["rows"].append(row)
    write_json("bench_quantize.json", out)
    for r in out["rows"]:
        for name, v in r.items():
            if isinstance(v, dict) and "error" in v:
                print(f"  {name} at {r['m']}x{r['k']}: {v['error']}")


if __name__ == "__main__":
    main()
