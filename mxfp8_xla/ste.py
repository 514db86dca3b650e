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
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from mxfp8_xla import per_shard, varying_axes
from mxfp8_xla.backends import TRAIN_QUANTIZERS, select_backend
from mxfp8_xla.matmul import cotangent_operands, mxfp8_matmul, straight_through_dx
from mxfp8_xla.mxarray import MXArray, check_float_dtype, check_quantizable, quantize

__all__ = ["mxfp8_linear_ste"]


def mxfp8_linear_ste(
    x: jax.Array,
    kernel: jax.Array,
    *,
    backend: str = "emulation",
    out_dtype: DTypeLike = jnp.bfloat16,
    name: str | None = None,
    out_sharding: P | NamedSharding | None = None,
) -> jax.Array:
    """``x [..., K] @ kernel [K, N]`` in MXFP8 with straight-through gradients.

    ``x`` and ``kernel`` are float32/bfloat16/float16; both are quantized with
    blocks of 32 along K (so K must be a multiple of 32) and multiplied by
    ``mxfp8_matmul(..., backend=backend, out_sharding=out_sharding)``. Returns ``[..., N]`` in ``out_dtype``;
    ``name`` labels the layer in backend errors. Operands split over ``Explicit`` mesh axes are quantized shard by
    shard (:mod:`mxfp8_xla.per_shard`), and their gradients come back split as they are.
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
    k_local, n_local = per_shard.local_shape(kernel)  # one device's, where the kernel is split (Explicit axes)
    chosen = select_backend(backend, n=n_local, k=k_local, out_dtype=out_dtype, name=name)
    static = _Static(
        backend=backend,  # mxfp8_matmul resolves "auto" again, for one device's shapes where the operands are split
        out_dtype=out_dtype,
        name=name,
        quantizers=TRAIN_QUANTIZERS.get(chosen, _JNP_QUANTIZERS),
        shardings=(per_shard.explicit_sharding(x), per_shard.explicit_sharding(kernel)),
        out_sharding=out_sharding,
    )
    x, kernel = varying_axes.match(x, kernel)  # in a shard_map that checks: each gradient varies as y does
    return _ste_jit(static, x, kernel)


_JNP_QUANTIZERS = (quantize, functools.partial(quantize, axis=0))
"""Train mode's quantizers on backends without their own: one object, so that ``_Static`` compares equal across
calls and the jit below compiles once per shape."""


class _Static(NamedTuple):
    """What the custom_vjp's rules take besides the operands (hashable: the jit's static argument)."""

    backend: str
    out_dtype: jnp.dtype
    name: str | None
    quantizers: tuple[Callable[[jax.Array], MXArray], Callable[[jax.Array], MXArray]]
    """``(quantize(x), quantize(kernel, axis=0))``, the backend's own (``backends.TRAIN_QUANTIZERS``) or jnp's."""
    shardings: tuple[NamedSharding | None, NamedSharding | None]
    """``x``'s and ``kernel``'s on Explicit mesh axes, which their gradients take (``per_shard.explicit_sharding``)."""
    out_sharding: P | NamedSharding | None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ste(static: _Static, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _forward(static, x, kernel)[0]


def _forward(
    static: _Static, x: jax.Array, kernel: jax.Array
) -> tuple[jax.Array, tuple[MXArray, MXArray, jax.Array, jax.Array]]:
    quantize_x, quantize_kernel = static.quantizers
    label = f"mxfp8_linear_ste({static.name})" if static.name else "mxfp8_linear_ste"
    xq = per_shard.quantize(quantize_x, x, -1, label)
    wq = per_shard.quantize(quantize_kernel, kernel, 0, label)
    y = mxfp8_matmul(
        xq, wq, out_dtype=static.out_dtype, backend=static.backend, name=static.name, out_sharding=static.out_sharding
    )
    # Zero-size arrays carry the primal dtypes to the backward pass.
    dtypes = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))
    return y, (xq, wq, *dtypes)


def _backward(
    static: _Static, residuals: tuple[MXArray, MXArray, jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x_sharding, kernel_sharding = static.shardings
    xq, wq, x_dtype_tag, k_dtype_tag = residuals
    lead = tuple(range(g.ndim - 1))  # contracted over every leading axis, not flattened: a split T cannot reshape
    g_lhs, x_hat, precision = cotangent_operands(g, xq, rows=math.prod(g.shape[:-1]))  # x_hat [..., K]
    dkernel = jax.lax.dot_general(
        x_hat,
        g_lhs,
        ((lead, lead), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
        out_sharding=kernel_sharding,
    )
    return straight_through_dx(g, wq, x_dtype_tag.dtype, x_sharding), dkernel.astype(k_dtype_tag.dtype)


_ste.defvjp(_forward, _backward)
# Jitted so that eager calls compile once instead of op by op; inlined under an outer jit.
_ste_jit = jax.jit(_ste, static_argnums=(0,))
