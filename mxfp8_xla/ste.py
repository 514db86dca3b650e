"""Straight-through estimator (STE) for the MXFP8 linear product, used by train mode.

Forward::

    y = mxfp8_matmul(quantize(x), quantize(kernel, axis=0))      # x [..., K], kernel [K, N]

Backward (``jax.custom_vjp``): the rounding of ``quantize`` is treated as the
identity, so the cotangents are those of a plain float32 matmul of the
*dequantized* operands the forward pass actually multiplied::

    x_hat = dequantize(quantize(x))                # float32 [..., K]
    w_hat = dequantize(quantize(kernel, axis=0))   # float32 [N, K]
    g32   = g.astype(float32)                      # g: cotangent of y, [..., N]
    dx      = (g32 @ w_hat)                         .astype(x.dtype)       # [..., K]
    dkernel = (x_hat.reshape(-1, K).T @ g32.reshape(-1, N)).astype(kernel.dtype)  # [K, N]

Both products accumulate float32 products in float32, as :func:`mxfp8_xla.matmul.cotangent_operands` arranges them:
a bf16 cotangent of several rows meets the decoded operand in bf16, which holds it exactly, on the tensor cores;
any other at ``Precision.HIGHEST``. The backend is used only in the forward pass. Gradients are *not*
quantized (no MXFP8 backward GEMMs). Rounding to E4M3, underflow of tiny elements to zero and the clip at
+-448 (which never triggers for finite inputs: each block's scale maps its amax
to at most 448) all get the identity gradient. Only the quantized operands
(1 + 1/32 bytes per element) are saved as residuals, not ``x`` or ``kernel``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mxfp8_xla.backends import TRAIN_QUANTIZERS, select_backend
from mxfp8_xla.matmul import cotangent_operands, explicit_sharding, mxfp8_matmul, straight_through_dx
from mxfp8_xla.mxarray import MXArray, check_float_dtype, check_quantizable, quantize

__all__ = ["mxfp8_linear_ste"]


def mxfp8_linear_ste(
    x: jax.Array,
    kernel: jax.Array,
    *,
    backend: str = "emulation",
    out_dtype: DTypeLike = jnp.bfloat16,
    name: str | None = None,
) -> jax.Array:
    """``x [..., K] @ kernel [K, N]`` in MXFP8 with straight-through gradients.

    ``x`` and ``kernel`` are float32/bfloat16/float16; both are quantized with
    blocks of 32 along K (so K must be a multiple of 32) and multiplied by
    ``mxfp8_matmul(..., backend=backend)``. Returns ``[..., N]`` in ``out_dtype``; ``name`` labels the
    layer in backend errors.
    Gradients: see the module docstring (float32 matmuls of the dequantized
    operands). Works under ``jit``, ``vmap``, ``grad``, ``remat`` and ``scan``.
    """
    check_quantizable(x, "mxfp8_linear_ste: x")
    if kernel.ndim != 2:
        raise ValueError(f"mxfp8_linear_ste: kernel must be 2-D [K, N], got shape {tuple(kernel.shape)}")
    k, n = kernel.shape
    check_quantizable(jax.ShapeDtypeStruct((n, k), kernel.dtype), "mxfp8_linear_ste: kernel.T [N, K]")
    if x.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"mxfp8_linear_ste: x has shape {tuple(x.shape)} but kernel has shape "
            f"{tuple(kernel.shape)}; the last axis of x must equal K = {kernel.shape[0]}"
        )
    out_dtype = check_float_dtype("mxfp8_linear_ste: out_dtype", out_dtype)
    backend = select_backend(backend, n=n, k=k, out_dtype=out_dtype, name=name)  # its quantizers, below
    shardings = (explicit_sharding(x), explicit_sharding(kernel))  # the gradients' on Explicit mesh axes
    return _ste_jit(backend, out_dtype, name, shardings, x, kernel)


Shardings = tuple[jax.sharding.NamedSharding | None, jax.sharding.NamedSharding | None]
"""``x``'s and ``kernel``'s, which their gradients take (``matmul.explicit_sharding``)."""


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _ste(
    backend: str, out_dtype: jnp.dtype, name: str | None, shardings: Shardings, x: jax.Array, kernel: jax.Array
) -> jax.Array:
    return _forward(backend, out_dtype, name, shardings, x, kernel)[0]


def _forward(
    backend: str, out_dtype: jnp.dtype, name: str | None, shardings: Shardings, x: jax.Array, kernel: jax.Array
) -> tuple[jax.Array, tuple[MXArray, MXArray, jax.Array, jax.Array]]:
    del shardings
    quantize_x, quantize_kernel = TRAIN_QUANTIZERS.get(backend, (quantize, functools.partial(quantize, axis=0)))
    xq = quantize_x(x)
    wq = quantize_kernel(kernel)
    y = mxfp8_matmul(xq, wq, out_dtype=out_dtype, backend=backend, name=name)
    # Zero-size arrays carry the primal dtypes to the backward pass.
    dtypes = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))
    return y, (xq, wq, *dtypes)


def _backward(
    backend: str,
    out_dtype: jnp.dtype,
    name: str | None,
    shardings: Shardings,
    residuals: tuple[MXArray, MXArray, jax.Array, jax.Array],
    g: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    del backend, out_dtype, name
    x_sharding, kernel_sharding = shardings
    xq, wq, x_dtype_tag, k_dtype_tag = residuals
    n, k = wq.shape
    g_rows = g.reshape(-1, n)
    g_rows, x_hat, precision = cotangent_operands(g_rows, xq, rows=g_rows.shape[0])  # x_hat [..., K]
    dkernel = jax.lax.dot_general(
        x_hat.reshape(-1, k),
        g_rows,
        (((0,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
        out_sharding=kernel_sharding,
    )
    return straight_through_dx(g, wq, x_dtype_tag.dtype, x_sharding), dkernel.astype(k_dtype_tag.dtype)


_ste.defvjp(_forward, _backward)
# Jitted so that eager calls compile once instead of op by op; inlined under an outer jit.
_ste_jit = jax.jit(_ste, static_argnums=(0, 1, 2, 3))
