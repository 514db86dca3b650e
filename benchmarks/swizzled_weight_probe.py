"""Probe: what a weight whose scales are in FlashInfer's 1-D layout costs a backend that undoes the swizzle per call.

``prepare_weight`` (and the layers after ``mxfp8_xla.flax.swizzle_params``) hand ``mxfp8_matmul`` a
``FlashInferWeight``; every backend but ``flashinfer`` unswizzles its scales inside the call. This times
``mxfp8_matmul(x, w)`` with ``w`` as an ``MXArray`` and as a ``FlashInferWeight`` on one backend (``hopper`` on a
GPU, ``emulation`` elsewhere), against bf16 ``jnp.dot``, in device time (``timing.loop_time``), and checks that
both weights give the same bits.

Usage: python benchmarks/swizzled_weight_probe.py [--backend hopper] [--ms 1,8,2048] [--iters 20];
JSON to $OUT/swizzled_weight_probe.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import environment, loop_time, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends.flashinfer import prepare_weight  # noqa: E402

SHAPES = [(14336, 4096), (4096, 14336), (4096, 4096)]
SETS = 8
WEIGHT_COPIES = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="hopper" if jax.default_backend() == "gpu" else "emulation")
    ap.add_argument("--ms", default="1,8,2048", help="comma-separated row counts M")
    ap.add_argument("--shapes", help="comma-separated NxK (default: the three of SHAPES)")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    backend = args.backend
    out = {"env": environment(), "backend": backend, "rows": []}
    print(out["env"], f"backend {backend}", flush=True)
    print(f"{'N':>6} {'K':>6} {'M':>5} {'bf16 us':>9} {'MXArray us':>11} {'swizzled us':>12} {'extra us':>9} same bits")
    variants = {
        "bf16": lambda x, w, wq, wsw: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16),
        "mxarray": lambda x, w, wq, wsw: mx.mxfp8_matmul(x, wq, backend=backend),
        "swizzled": lambda x, w, wq, wsw: mx.mxfp8_matmul(x, wsw, backend=backend),
    }
    for n, k in shapes:
        keys = jax.random.split(jax.random.key(n + k), WEIGHT_COPIES + SETS)
        ws = [jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02 for i in range(WEIGHT_COPIES)]
        wqs = [mx.quantize(w) for w in ws]
        wsws = [prepare_weight(wq) for wq in wqs]
        for m in [int(v) for v in args.ms.split(",")]:
            xs = [jax.random.normal(keys[WEIGHT_COPIES + i], (m, k), jnp.bfloat16) for i in range(SETS)]
            sets = [(xs[i], *(c[i % WEIGHT_COPIES] for c in (ws, wqs, wsws))) for i in range(SETS)]
            row = {"n": n, "k": k, "m": m}
            for name, fn in variants.items():
                row[f"{name}_us"] = loop_time(fn, sets, iters=args.iters) * 1e6
            a = np.asarray(jax.jit(variants["mxarray"])(*sets[0]).astype(jnp.float32))
            b = np.asarray(jax.jit(variants["swizzled"])(*sets[0]).astype(jnp.float32))
            row["same_bits"] = bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))
            out["rows"].append(row)
            write_json("swizzled_weight_probe.json", out)
            extra = row["swizzled_us"] - row["mxarray_us"]
            print(
                f"{n:6d} {k:6d} {m:5d} {row['bf16_us']:9.1f} {row['mxarray_us']:11.1f} {row['swizzled_us']:12.1f} "
                f"{extra:9.1f} {row['same_bits']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
