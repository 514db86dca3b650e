"""Train mode's second derivatives on the device, and what supporting them costs a first-order training step.

Second derivatives through ``mxfp8_linear_ste`` are those of the float32 product of the dequantized operands: its
forward rule gives ``y`` the tangent ``x_dot @ w_hat.T + x_hat @ kernel_dot`` and its backward pass's decoded operands
take ``x``'s and ``kernel``'s tangents, which makes ``x`` and ``kernel`` residuals too (docs/layers.md, "Autodiff").

- ``hvp`` cases: ``jax.grad`` of ``jax.grad`` (a Hessian-vector product in ``x`` and ``kernel`` together) of
  ``sum(y^2)`` through ``--backend``, under ``jit``, against float64 NumPy from the decoded operands: within 1e-5 of
  the largest entry for float32 outputs, 2^-7 for bf16 outputs (the roundings of ``y``, its cotangent and the
  tangents to bf16); and the layer as a ``lax.scan``'s body.
- ``first order`` cases: the jitted first-order step (``jax.grad`` of ``sum(h^2)`` through ``--layers`` layers
  ``h = relu(ste(h, k))``, unrolled and as a ``lax.scan``) against :func:`quantized_residuals_only`, the same
  product and first-order rule saving only the quantized operands: XLA's temporary memory must not grow; device
  time (``timing.loop_time``) of both, and their ratio, are reported.

Usage: PYTHONPATH=. python3 benchmarks/ste_second_order_check.py [--backend hopper] [--rows 8,300,2048]
[--width 4096] [--step-rows 2048] [--layers 4] [--iters 10]. Writes ``$OUT/ste_second_order_check.json``; exits 1 if
a case failed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import environment, failure, finish_checks, loop_time  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla import ste  # noqa: E402
from mxfp8_xla.backends import TRAIN_QUANTIZERS  # noqa: E402
from mxfp8_xla.matmul import cotangent_operands, straight_through_dx  # noqa: E402

F32 = jnp.float32


def quantized_residuals_only(backend: str, out_dtype: jnp.dtype) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``mxfp8_linear_ste(x, kernel)`` with the first-order rule it had before second derivatives were supported: the
    same quantizers, product and backward products, but only the quantized operands saved (jitted, as the
    library's is). The baseline of the ``first order`` cases."""
    quantize_x, quantize_kernel = TRAIN_QUANTIZERS.get(backend, ste._JNP_QUANTIZERS)

    def forward(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple]:
        xq, wq = quantize_x(x), quantize_kernel(kernel)
        dtypes = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))  # zero-size: the primal dtypes
        return mx.mxfp8_matmul(xq, wq, out_dtype=out_dtype, backend=backend), (xq, wq, *dtypes)

    def backward(residuals: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        xq, wq, x_tag, kernel_tag = residuals
        lead = tuple(range(g.ndim - 1))
        g_lhs, x_hat, precision = cotangent_operands(g, xq, rows=math.prod(g.shape[:-1]))
        dims = ((lead, lead), ((), ()))
        dkernel = jax.lax.dot_general(x_hat, g_lhs, dims, precision=precision, preferred_element_type=F32)
        return straight_through_dx(g, wq, x_tag.dtype), dkernel.astype(kernel_tag.dtype)

    product = jax.custom_vjp(lambda x, kernel: forward(x, kernel)[0])
    product.defvjp(forward, backward)
    return jax.jit(product)


def hvp_case(backend: str, m: int, n: int, k: int, out_dtype: jnp.dtype, scanned: bool = False) -> dict:
    """One Hessian-vector product through ``mxfp8_linear_ste`` on ``backend`` against float64 NumPy; ``scanned``: the
    layer as the body of a one-step ``lax.scan``, where jax < 0.12 drops a ``custom_jvp``'s rule (so there the
    forward rule's tangent is a ``custom_vjp``)."""
    keys = jax.random.split(jax.random.key(m), 4)
    x, v_x = (jax.random.normal(key, (m, k), F32) for key in keys[:2])
    kernel, v_k = (jax.random.normal(key, (k, n), F32) * k**-0.5 for key in keys[2:])

    def loss(x: jax.Array, kernel: jax.Array) -> jax.Array:
        layer = lambda x, kernel: ste.mxfp8_linear_ste(x, kernel, backend=backend, out_dtype=out_dtype)  # noqa: E731
        y = jax.lax.scan(lambda x, k: (x, layer(x, k)), x, kernel[None])[1][0] if scanned else layer(x, kernel)
        return jnp.sum(y.astype(F32) ** 2)

    def along_v(x: jax.Array, kernel: jax.Array) -> jax.Array:
        g_x, g_k = jax.grad(loss, (0, 1))(x, kernel)
        return jnp.vdot(g_x, v_x) + jnp.vdot(g_k, v_k)

    got = jax.jit(jax.grad(along_v, (0, 1)))(x, kernel)
    xd = np.asarray(mx.dequantize(mx.quantize(x), F32), np.float64)
    wd = np.asarray(mx.dequantize(mx.quantize(kernel, axis=0), F32), np.float64)  # [N, K]
    v_x, v_k = np.asarray(v_x, np.float64), np.asarray(v_k, np.float64)
    y = xd @ wd.T
    y_dot = v_x @ wd.T + xd @ v_k
    want = (2 * (y_dot @ wd + y @ v_k.T), 2 * (v_x.T @ y + xd.T @ y_dot))
    diffs = [
        float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b))) for a, b in zip(got, want, strict=True)
    ]
    tolerance = 2.0**-7 if out_dtype == jnp.bfloat16 else 1e-5
    return {"dx_diff": diffs[0], "dkernel_diff": diffs[1], "ok": max(diffs) <= tolerance}


def first_order_case(
    backend: str, m: int, width: int, layers: int, scanned: bool, iters: int | None, dtype: jnp.dtype = jnp.bfloat16
) -> dict:
    """The jitted first-order step through ``layers`` train-mode layers (bf16 operands and outputs), the library's
    against :func:`quantized_residuals_only`'s: XLA's temporary bytes of each, their device time if ``iters``, and
    whether the gradients agree and the library's step needs no more memory."""
    ours = lambda x, kernel: ste.mxfp8_linear_ste(x, kernel, backend=backend, out_dtype=dtype)  # noqa: E731
    products = {"library": ours, "baseline": quantized_residuals_only(backend, jnp.dtype(dtype))}
    keys = jax.random.split(jax.random.key(1), 4)
    sets = [
        (jax.random.normal(keys[i], (m, width), dtype), jax.random.normal(keys[i + 2], (layers, width, width), dtype))
        for i in range(2)
    ]
    sets = [(x, (ks * width**-0.5).astype(dtype)) for x, ks in sets]
    case: dict = {}
    grads = {}
    for name, product in products.items():

        def loss(x: jax.Array, ks: jax.Array, product=product) -> jax.Array:
            layer = lambda h, kernel: (jax.nn.relu(product(h, kernel)), None)  # noqa: E731
            if scanned:
                x, _ = jax.lax.scan(layer, x, ks)
            else:
                for kernel in ks:
                    x = layer(x, kernel)[0]
            return jnp.sum(x.astype(F32) ** 2)

        step = jax.jit(jax.grad(loss, argnums=(0, 1)))
        case[f"{name}_temp_bytes"] = step.lower(*sets[0]).compile().memory_analysis().temp_size_in_bytes
        grads[name] = step(*sets[0])
        if iters:
            case[f"{name}_us"] = loop_time(step, sets, iters=iters) * 1e6
    if iters:
        case["time_ratio"] = case["library_us"] / case["baseline_us"]
    diffs = [
        float(jnp.max(jnp.abs(a.astype(F32) - b.astype(F32))) / jnp.max(jnp.abs(b.astype(F32))))
        for a, b in zip(grads["library"], grads["baseline"], strict=True)
    ]
    case["grad_diff"] = max(diffs)
    case["ok"] = case["library_temp_bytes"] <= case["baseline_temp_bytes"] and case["grad_diff"] <= 1e-6
    return case


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="hopper")
    ap.add_argument("--rows", default="8,300,2048", help="rows of the Hessian-vector products")
    ap.add_argument("--width", type=int, default=4096, help="K of every product, and N of the first-order layers")
    ap.add_argument("--hvp-n", type=int, default=2048, help="N of the Hessian-vector products")
    ap.add_argument("--step-rows", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10, help="loop_time rounds (0: no timing)")
    args = ap.parse_args(argv)
    results = {"env": environment(), "args": vars(args), "cases": []}
    print(results["env"], flush=True)
    runs = (
        [
            (
                {"what": "hvp", "m": m, "out_dtype": dt.__name__},
                lambda m=m, dt=dt: hvp_case(args.backend, m, args.hvp_n, args.width, dt),
            )
            for m in map(int, args.rows.split(","))
            for dt in (jnp.float32, jnp.bfloat16)
        ]
        + [
            (
                {"what": "hvp in a lax.scan", "m": 300, "out_dtype": "float32"},
                lambda: hvp_case(args.backend, 300, args.hvp_n, args.width, jnp.float32, scanned=True),
            ),
        ]
        + [
            (
                {"what": "first order", "m": args.step_rows, "scan": scanned},
                lambda scanned=scanned: first_order_case(
                    args.backend, args.step_rows, args.width, args.layers, scanned, args.iters or None
                ),
            )
            for scanned in (False, True)
        ]
    )
    for case, run in runs:
        try:
            case.update(run())
        except Exception as e:  # a case that fails is reported, not fatal
            case.update(ok=False, error=failure(e))
        results["cases"].append(case)
        print(case, flush=True)
    return finish_checks("ste_second_order_check.json", results)


if __name__ == "__main__":
    sys.exit(main())
