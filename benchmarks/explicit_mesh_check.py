"""The `hopper` backend on operands split over Explicit mesh axes, on the device: every route runs shard by shard.

On ``jax.make_mesh``'s default Explicit axes the operands' types carry their shardings, and ``mxfp8_matmul`` and
train mode run the backend inside ``shard_map`` (``mxfp8_xla.per_shard``): the hopper kernels refuse a split
operand. The CPU tests check that on 4 devices with the Pallas kernels in interpret mode; this checks the real
kernels (the CUDA GEMVs, Triton, Mosaic GPU, cuBLAS, the train-mode quantizers) on a one-device mesh of two axes,
whose specs still split the operands' types: each route's output equals the unsplit call's within one rounding of
the bf16 output (``bit_equal`` says where it is bit for bit; the first run demanded that, and at 300 rows, the
cuBLAS route, XLA summed differently inside shard_map: 1.04e-3), and train mode's gradients equal the unsplit ones
within 1e-5. It also times a row-split product against the
unsplit one (``timing.loop_time``), where per_shard should cost nothing.

    PYTHONPATH=. python3 benchmarks/explicit_mesh_check.py

Writes ``$OUT/explicit_mesh_check.json``; exits 1 on a mismatch.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import environment, failure, finish_checks, loop_time  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.ste import mxfp8_linear_ste  # noqa: E402

N, K = 2048, 4096
ROWS = (1, 2, 8, 16, 64, 300, 2048)
"""One row count per hopper route at K = 4096 (docs/benchmarks.md)."""
SPLITS = (
    ("rows", P("data", None), P(None, None), None),
    ("rows and N", P("data", None), P("model", None), None),
    ("K on both", P("data", "model"), P(None, "model"), P("data", None)),
)
"""``(label, x's spec, the weight's spec, out_sharding)``."""


def rel_diff(a: jax.Array, b: jax.Array) -> float:
    """Max-abs difference relative to ``b``'s largest element (also manual_mesh_check.py's measure)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main() -> int:
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    keys = jax.random.split(jax.random.key(0), 4)
    w = mx.quantize(jax.random.normal(keys[0], (N, K), jnp.float32) * 0.05)
    results = {"env": environment(), "cases": []}
    print(results["env"], flush=True)
    for m in ROWS:
        x = jax.random.normal(keys[1], (m, K), jnp.bfloat16)
        want = jax.jit(lambda x: mx.mxfp8_matmul(x, w, backend="hopper"))(x)
        for label, x_spec, w_spec, out in SPLITS:
            case = {"what": f"mxfp8_matmul, {label}", "m": m}
            try:
                with jax.set_mesh(mesh):
                    xs = jax.device_put(x, NamedSharding(mesh, x_spec))
                    ws = mx.MXArray(*(jax.device_put(a, NamedSharding(mesh, w_spec)) for a in (w.data, w.scale)))
                    y = jax.jit(lambda x, w, out=out: mx.mxfp8_matmul(x, w, backend="hopper", out_sharding=out))(xs, ws)
                case["diff"] = rel_diff(y, want)
                case["bit_equal"] = bool(np.array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32)))
                case["ok"] = case["diff"] <= 2.0**-8  # one bf16 rounding: XLA may block a cuBLAS sum differently
            except Exception as e:
                case.update(ok=False, error=failure(e))
            results["cases"].append(case)
            print(case, flush=True)
    kernel = (jax.random.normal(keys[2], (K, N), jnp.float32) * 0.05).astype(jnp.bfloat16)
    for m in (8, 2048):
        x = jax.random.normal(keys[3], (m, K), jnp.bfloat16)
        c = jax.random.normal(keys[1], (m, N), jnp.float32)
        grad = jax.jit(
            jax.grad(
                lambda x, k, c=c: jnp.sum(c * mxfp8_linear_ste(x, k, backend="hopper").astype(float)), argnums=(0, 1)
            )
        )
        want = grad(x, kernel)
        case = {"what": "mxfp8_linear_ste, rows and N", "m": m}
        try:
            with jax.set_mesh(mesh):
                xs, ks = jax.device_put(x, P("data", None)), jax.device_put(kernel, P(None, "model"))
                got = grad(xs, ks)
            case["diffs"] = [rel_diff(g, h) for g, h in zip(got, want, strict=True)]
            case["ok"] = max(case["diffs"]) <= 1e-5
        except Exception as e:
            case.update(ok=False, error=failure(e))
        results["cases"].append(case)
        print(case, flush=True)
    for m in (1, 8, 2048):
        x = jax.random.normal(keys[1], (m, K), jnp.bfloat16)
        row = {"what": "time, rows split", "m": m}
        try:
            row["unsplit_us"] = loop_time(lambda x: mx.mxfp8_matmul(x, w, backend="hopper"), [(x,)] * 4) * 1e6
            with jax.set_mesh(mesh):
                xs = jax.device_put(x, P("data", None))
                row["split_us"] = loop_time(lambda x: mx.mxfp8_matmul(x, w, backend="hopper"), [(xs,)] * 4) * 1e6
            row["ok"] = True
        except Exception as e:
            row.update(ok=False, error=failure(e))
        results["cases"].append(row)
        print(row, flush=True)
    return finish_checks("explicit_mesh_check.json", results)


if __name__ == "__main__":
    sys.exit(main())
