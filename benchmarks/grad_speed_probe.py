"""Probe: what the straight-through input gradient of the inference product costs on the device, against bf16.

``jax.grad`` with respect to the bf16 activation of ``sum(c * (x @ w.T))``: the MXFP8 product on ``--backend``
(forward) plus its ``custom_vjp``'s ``g @ dequantize(w)`` in float32 at ``Precision.HIGHEST`` (backward), against
the same through bf16 ``jnp.dot`` on the bf16 weight (XLA's own backward). Device time, ``timing.loop_time``.

Usage: python benchmarks/grad_speed_probe.py [--backend hopper] [--ms 16,2048] [--iters 10] [--out-dtype float32];
JSON to $OUT/grad_speed_probe.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import environment, loop_time, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402

SHAPES = [(14336, 4096), (4096, 14336)]
SETS = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="hopper" if jax.default_backend() == "gpu" else "emulation")
    ap.add_argument("--ms", default="16,2048", help="comma-separated row counts M")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out-dtype", default="bfloat16", help="the MXFP8 output's dtype, which its cotangent takes")
    args = ap.parse_args()
    out = {"env": environment(), "backend": args.backend, "out_dtype": args.out_dtype, "rows": []}
    print(out["env"], f"backend {args.backend}, MXFP8 output {args.out_dtype}", flush=True)
    print(f"{'N':>6} {'K':>6} {'M':>5} {'bf16 fwd':>9} {'bf16 grad':>10} {'mx fwd':>8} {'mx grad':>8}  (us)")
    for n, k in SHAPES:
        keys = jax.random.split(jax.random.key(n + k), 2 * SETS)
        ws = [jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02 for i in range(SETS)]
        wqs = [mx.quantize(w) for w in ws]
        for m in [int(v) for v in args.ms.split(",")]:
            xs = [jax.random.normal(keys[SETS + i], (m, k), jnp.bfloat16) for i in range(SETS)]
            sets = [(xs[i], ws[i], wqs[i]) for i in range(SETS)]

            def bf16(x, w, wq):
                return jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16)

            def mxfp8(x, w, wq):
                return mx.mxfp8_matmul(x, wq, backend=args.backend, out_dtype=jnp.dtype(args.out_dtype))

            row = {"n": n, "k": k, "m": m}
            for name, fn in (("bf16", bf16), ("mxfp8", mxfp8)):
                grad = jax.grad(lambda x, w, wq, fn=fn: jnp.sum(fn(x, w, wq).astype(jnp.float32)))
                row[f"{name}_fwd_us"] = loop_time(fn, sets, iters=args.iters) * 1e6
                row[f"{name}_grad_us"] = loop_time(grad, sets, iters=args.iters) * 1e6
            out["rows"].append(row)
            write_json("grad_speed_probe.json", out)
            print(
                f"{n:6d} {k:6d} {m:5d} {row['bf16_fwd_us']:9.1f} {row['bf16_grad_us']:10.1f} "
                f"{row['mxfp8_fwd_us']:8.1f} {row['mxfp8_grad_us']:8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
