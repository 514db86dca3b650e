"""The inference product's gradients on the device: every ``hopper`` route backpropagates, straight-through.

``mxfp8_matmul`` and ``add_rms_norm_matmul`` are ``custom_vjp``s whose input gradient is ``g @ dequantize(w)``
(docs/layers.md, "Inference mode backpropagates to its input"), the same jnp code on every backend. So whichever
kernel ran the forward pass, the ``hopper`` backend's gradient must equal emulation's up to the float32 summation
order XLA picks in each program (their forward passes differ, and so do XLA's fusions around the backward dot); the
CPU tests can only trace the GPU kernels. For each row count (one per route: the CUDA-core GEMV, the tensor-core
GEMV, the Pallas or Mosaic GPU kernel, cuBLAS) this takes ``jax.grad`` of ``sum(c * y)`` with respect to the bf16
activation on both backends, under ``jit``, and the same through the fused add-and-norm kernel (one row) with respect
to ``x``, ``delta`` and the norm weight; it also checks the forward outputs against emulation. With a bf16 output
(its bf16 cotangent takes a bf16 x bf16 -> float32 product) each row count's gradient is checked against the float32
product at ``Precision.HIGHEST``, to one bf16 rounding. Train mode's STE (``mxfp8_linear_ste``, a float32 kernel
``[K, N]`` and a bf16 output, so both backward products take bf16 operands) is checked at ``TRAIN_ROWS`` against
the float32 products of the decoded operands at ``Precision.HIGHEST``. Exits 1 on any case beyond its tolerance.

    PYTHONPATH=. python3 benchmarks/grad_check.py

Writes ``$OUT/grad_check.json``.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import environment, failure, finish_checks  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.ste import mxfp8_linear_ste  # noqa: E402

N, K = 2048, 4096
ROWS = (1, 8, 16, 64, 300)
"""One row each of the hopper backend's routes at K = 4096 (docs/benchmarks.md)."""
TRAIN_ROWS = (8, 300, 2048)


TOLERANCE = 1e-5
"""Max-abs relative difference allowed between the two backends' gradients (float32 summation order)."""


def _diff(a: jax.Array, b: jax.Array) -> float:
    """Max |a - b| / max |b|, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main() -> int:
    keys = jax.random.split(jax.random.key(0), 6)
    w = mx.quantize(jax.random.normal(keys[0], (N, K), jnp.float32) * 0.05)
    c = jax.random.normal(keys[1], (max(ROWS), N), jnp.float32)
    results = {"env": environment(), "cases": []}
    print(results["env"], flush=True)
    for m in ROWS:
        x = jax.random.normal(keys[2], (m, K), jnp.bfloat16)
        case = {"what": "mxfp8_matmul", "m": m}
        try:
            outs = {}
            for backend in ("hopper", "emulation"):

                def loss(x, b=backend, cm=c[:m]):
                    return jnp.sum(cm * mx.mxfp8_matmul(x, w, out_dtype=jnp.float32, backend=b))

                outs[backend] = jax.jit(jax.value_and_grad(loss))(x)
            (y_h, dx_h), (y_e, dx_e) = outs["hopper"], outs["emulation"]
            case.update(loss_rel_err=float(abs(y_h - y_e) / abs(y_e)), dx_diff=_diff(dx_h, dx_e))
            case["ok"] = case["dx_diff"] <= TOLERANCE and case["loss_rel_err"] < 1e-4
        except Exception as e:  # a route that fails is reported, not fatal
            case.update(ok=False, error=failure(e))
        results["cases"].append(case)
        print(case, flush=True)
    for m in ROWS:  # a bf16 output: its bf16 cotangent takes the bf16 x bf16 -> float32 product
        x = jax.random.normal(keys[2], (m, K), jnp.bfloat16)
        case = {"what": "mxfp8_matmul, bf16 out", "m": m}
        try:
            loss = lambda x, cm=c[:m]: jnp.sum(cm * mx.mxfp8_matmul(x, w, backend="hopper").astype(float))  # noqa: E731
            dx = jax.jit(jax.grad(loss))(x)
            g = c[:m].astype(jnp.bfloat16).astype(jnp.float32)  # the cotangent the bf16 output receives
            want = jnp.dot(g, mx.dequantize(w, jnp.float32), precision=jax.lax.Precision.HIGHEST)
            case["dx_diff"] = _diff(dx, want.astype(jnp.bfloat16))
            case["ok"] = case["dx_diff"] <= 2.0**-8  # dx is bf16: one rounding of the float32 sum
        except Exception as e:
            case.update(ok=False, error=failure(e))
        results["cases"].append(case)
        print(case, flush=True)
    kernel = jax.random.normal(keys[0], (K, N), jnp.float32) * 0.05
    for m in TRAIN_ROWS:  # train mode: dx and dkernel from bf16 x bf16 -> float32 products
        x = jax.random.normal(keys[2], (m, K), jnp.bfloat16)
        cm = jax.random.normal(keys[1], (m, N), jnp.float32)
        case = {"what": "mxfp8_linear_ste, bf16 out", "m": m}
        try:
            loss = lambda x, kernel, cm=cm: jnp.sum(  # noqa: E731
                cm * mxfp8_linear_ste(x, kernel, backend="hopper").astype(jnp.float32)
            )
            dx, dkernel = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
            g = cm.astype(jnp.bfloat16).astype(jnp.float32)
            x_hat = mx.dequantize(mx.quantize(x), jnp.float32)
            w_hat = mx.dequantize(mx.quantize(kernel, axis=0), jnp.float32)  # [N, K]
            highest = jax.lax.Precision.HIGHEST
            case["dx_diff"] = _diff(dx, jnp.dot(g, w_hat, precision=highest).astype(jnp.bfloat16))
            case["dkernel_diff"] = _diff(dkernel, jnp.dot(x_hat.T, g, precision=highest))
            case["ok"] = case["dx_diff"] <= 2.0**-8 and case["dkernel_diff"] <= TOLERANCE
        except Exception as e:
            case.update(ok=False, error=failure(e))
        results["cases"].append(case)
        print(case, flush=True)
    x, delta = (jax.random.normal(k, (1, K), jnp.bfloat16) for k in keys[3:5])
    norm_weight = (1 + 0.1 * jax.random.normal(keys[5], (K,), jnp.float32)).astype(jnp.bfloat16)
    case = {"what": "add_rms_norm_matmul", "m": 1}
    try:
        outs = {}
        for backend in ("hopper", "emulation"):

            def loss(x, delta, norm_weight, b=backend):
                y, h = mx.add_rms_norm_matmul(x, delta, norm_weight, w, eps=1e-5, out_dtype=jnp.float32, backend=b)
                return jnp.sum(c[:1] * y) + jnp.sum(h.astype(jnp.float32))

            outs[backend] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, delta, norm_weight)
        (y_h, g_h), (y_e, g_e) = outs["hopper"], outs["emulation"]
        case.update(loss_rel_err=float(abs(y_h - y_e) / abs(y_e)), grad_diffs=list(map(_diff, g_h, g_e)))
        case["ok"] = max(case["grad_diffs"]) <= TOLERANCE and case["loss_rel_err"] < 1e-4
    except Exception as e:
        case.update(ok=False, error=failure(e))
    results["cases"].append(case)
    print(case, flush=True)
    return finish_checks("grad_check.json", results)


if __name__ == "__main__":
    sys.exit(main())
