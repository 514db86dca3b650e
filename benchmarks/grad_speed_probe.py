"""Probe: what the straight-through gradients cost on the device, against bf16.

``--mode inference``: ``jax.grad`` with respect to the bf16 activation of ``sum(x @ w.T)``, the MXFP8 product on
``--backend`` (forward) plus its ``custom_vjp``'s ``g @ dequantize(w)`` (backward), against the same through bf16
``jnp.dot`` on the bf16 weight (XLA's own backward).

``--mode train``: ``jax.grad`` with respect to the activation and the bf16 kernel ``[K, N]`` of ``sum(x @ kernel)``
through train mode's STE (``mxfp8_linear_ste``: both operands quantized every call, then the two backward products),
against bf16 ``jnp.dot``. The STE is timed three times in the same process: as shipped; with both backward products
forced to float32 at ``Precision.HIGHEST`` (``mxfp8_f32_backward``: the rule before the twenty-fourth session); and
with the backend's own quantizers (``backends.TRAIN_QUANTIZERS``) removed, so that ``quantize``'s jnp quantizes x and
the kernel (``mxfp8_xla_quantize``: the forward before the twenty-fourth session).

Device time, ``timing.loop_time`` (or with ``--timer queued`` ``timing.device_time``). Usage: python
benchmarks/grad_speed_probe.py [--mode inference|train] [--backend hopper] [--ms 16,2048] [--iters 10]
[--out-dtype float32] [--timer queued]; JSON to $OUT/grad_speed_probe.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import add_timer_option, environment, timer, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla import matmul, ste  # noqa: E402
from mxfp8_xla.backends import TRAIN_QUANTIZERS  # noqa: E402

SHAPES = [(14336, 4096), (4096, 14336)]
SETS = 4


SHIPPED_RULE = matmul.cotangent_operands


def float32_operands(g, operand, rows):
    """``cotangent_operands`` as if every cotangent were float32: both backward products at HIGHEST."""
    return SHIPPED_RULE(g.astype(jnp.float32), operand, rows)


SHIPPED_QUANTIZERS = dict(TRAIN_QUANTIZERS)


def trace_as(variant: str) -> None:
    """Make the STE trace as ``variant`` does (its backward rule, its quantizers); jit caches are cleared, since they
    hold traced functions."""
    rule = float32_operands if variant.endswith("f32_backward") else SHIPPED_RULE
    ste.cotangent_operands = matmul.cotangent_operands = rule
    TRAIN_QUANTIZERS.clear()
    if not variant.endswith("xla_quantize"):
        TRAIN_QUANTIZERS.update(SHIPPED_QUANTIZERS)
    jax.clear_caches()


def variants(mode: str, backend: str, out_dtype: jnp.dtype):
    """``{name: (fn(x, w, wq, kernel), argnums to differentiate)}`` for ``mode``; ``w`` [N, K], ``kernel`` = w.T."""
    if mode == "inference":
        return {
            "bf16": (lambda x, w, wq, kernel: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16), (0,)),
            "mxfp8": (lambda x, w, wq, kernel: mx.mxfp8_matmul(x, wq, backend=backend, out_dtype=out_dtype), (0,)),
        }
    train = lambda x, w, wq, kernel: ste.mxfp8_linear_ste(x, kernel, backend=backend, out_dtype=out_dtype)  # noqa: E731
    return {
        "bf16": (lambda x, w, wq, kernel: jnp.dot(x, kernel, preferred_element_type=jnp.bfloat16), (0, 3)),
        "mxfp8": (train, (0, 3)),
        "mxfp8_f32_backward": (train, (0, 3)),
        "mxfp8_xla_quantize": (train, (0, 3)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("inference", "train"), default="inference")
    ap.add_argument("--backend", default="hopper" if jax.default_backend() == "gpu" else "emulation")
    ap.add_argument("--ms", default="16,2048", help="comma-separated row counts M")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out-dtype", default="bfloat16", help="the MXFP8 output's dtype, which its cotangent takes")
    add_timer_option(ap)
    args = ap.parse_args()
    timed = timer(args.timer)
    out_dtype = jnp.dtype(args.out_dtype)
    out = {"env": environment(), "mode": args.mode, "backend": args.backend, "out_dtype": args.out_dtype, "rows": []}
    print(out["env"], f"mode {args.mode}, backend {args.backend}, MXFP8 output {args.out_dtype}", flush=True)
    names = list(variants(args.mode, args.backend, out_dtype))
    heads = " ".join(f"{v + ' fwd':>{len(v) + 5}} {v + ' grad':>{len(v) + 6}}" for v in names)
    print(f"{'N':>6} {'K':>6} {'M':>5} {heads}  (us)")
    for n, k in SHAPES:
        keys = jax.random.split(jax.random.key(n + k), 2 * SETS)
        ws = [jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02 for i in range(SETS)]
        wqs = [mx.quantize(w) for w in ws]
        for m in [int(v) for v in args.ms.split(",")]:
            xs = [jax.random.normal(keys[SETS + i], (m, k), jnp.bfloat16) for i in range(SETS)]
            sets = [(xs[i], ws[i], wqs[i], ws[i].T) for i in range(SETS)]
            row = {"n": n, "k": k, "m": m}
            for name, (fn, argnums) in variants(args.mode, args.backend, out_dtype).items():
                loss = lambda *a, fn=fn: jnp.sum(fn(*a).astype(jnp.float32))  # noqa: E731
                grad = jax.grad(loss, argnums=argnums)
                trace_as(name)
                row[f"{name}_fwd_us"] = timed(fn, sets, iters=args.iters) * 1e6
                row[f"{name}_grad_us"] = timed(grad, sets, iters=args.iters) * 1e6
            out["rows"].append(row)
            write_json("grad_speed_probe.json", out)
            cells = " ".join(
                f"{row[f'{v}_fwd_us']:{len(v) + 5}.1f} {row[f'{v}_grad_us']:{len(v) + 6}.1f}" for v in names
            )
            print(f"{n:6d} {k:6d} {m:5d} {cells}", flush=True)


if __name__ == "__main__":
    main()
