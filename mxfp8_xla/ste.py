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
to at most 448) all get the identity gradient. The backward products read the quantized operands
(1 + 1/32 bytes per element), saved by the forward pass.

Higher derivatives (``jax.grad`` of ``jax.grad``, Hessian-vector products, third derivatives) are those of the same
float32 matmul of the dequantized operands, also inside ``lax.scan`` and ``fori_loop``: the forward rule gives ``y``
the tangent ``x_dot @ w_hat.T + x_hat @ kernel_dot`` (:func:`_differentiated_as_product`), and the backward pass's
decoded operands take ``x``'s and ``kernel``'s tangents (:func:`mxfp8_xla.matmul.straight_through`). On jax < 0.12
only reverse over reverse (see :data:`KEEPS_CUSTOM_JVP_RULES`). For that, ``x`` and ``kernel`` are residuals too. A
first-order gradient never reads them: where one jitted function differentiates and uses the gradient, XLA drops
them (the compiled step is the one without them, tested), but a ``jax.vjp`` closure taken eagerly or returned from a
``jit`` holds them (the caller's arrays, or copies where they were computed inside the differentiated function).
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
from mxfp8_xla.matmul import cotangent_operands, labelled, mxfp8_matmul, straight_through, straight_through_dx
from mxfp8_xla.mxarray import MXArray, check_array, check_float_dtype, check_quantizable, dequantize, quantize

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
    check_array(kernel, "mxfp8_linear_ste: kernel")
    if kernel.ndim != 2:
        raise ValueError(f"mxfp8_linear_ste: kernel must be 2-D [K, N], got shape {tuple(kernel.shape)}")
    if x.shape[-1] != kernel.shape[0]:
        transposed = "; this one looks like [N, K]: pass its transpose" if x.shape[-1] == kernel.shape[1] else ""
        raise ValueError(
            f"mxfp8_linear_ste: x has shape {tuple(x.shape)} but kernel has shape {tuple(kernel.shape)}; the last "
            f"axis of x must equal K = {kernel.shape[0]} (the kernel is [K, N]{transposed})"
        )
    k, n = kernel.shape
    check_quantizable(jax.ShapeDtypeStruct((n, k), kernel.dtype), "mxfp8_linear_ste: kernel.T [N, K]")
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
    label = labelled("mxfp8_linear_ste", static.name)
    # The quantizers' own derivatives are never taken (Pallas kernels have none): _differentiated_as_product stands
    # for them.
    xq = per_shard.quantize(quantize_x, jax.lax.stop_gradient(x), -1, label)
    wq = per_shard.quantize(quantize_kernel, jax.lax.stop_gradient(kernel), 0, label)
    y = mxfp8_matmul(
        xq, wq, out_dtype=static.out_dtype, backend=static.backend, name=static.name, out_sharding=static.out_sharding
    )
    residuals = (xq, wq, x, kernel)
    return _differentiated_as_product(static, y, *residuals), residuals


KEEPS_CUSTOM_JVP_RULES = jax.__version_info__ >= (0, 12)
"""Whether JAX keeps a ``custom_jvp``'s rule where partial evaluation meets it with unknown inputs. jax 0.11.2 and
older dropped it (``JaxprTrace.process_custom_jvp_call``), which a ``lax.scan``, ``fori_loop`` or ``map`` body does
when it is differentiated: the forward rule's tangent would vanish there silently. Older JAX gets a ``custom_vjp``
instead, which survives, so there higher derivatives are reverse-over-reverse only (``jax.grad`` of ``jax.grad``);
forward-over-reverse (``jax.hessian``, ``jax.jvp`` of ``jax.grad``) raises JAX's "can't apply forward-mode autodiff
(jvp) to a custom_vjp function"."""


def _differentiated_as_product(
    static: _Static, y: jax.Array, xq: MXArray, wq: MXArray, x: jax.Array, kernel: jax.Array
) -> jax.Array:
    """``y = xq @ wq.T`` as computed, differentiated (where the forward rule itself is: second derivatives) as the
    float32 product of the decoded operands, ``x_hat @ w_hat.T``, whose tangents are ``x``'s and ``kernel``'s."""
    if KEEPS_CUSTOM_JVP_RULES:
        return _product_tangent(y, xq, wq, x, kernel)
    return _product_cotangent(static, y, xq, wq, x, kernel)


@jax.custom_jvp
def _product_tangent(y: jax.Array, xq: MXArray, wq: MXArray, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`_differentiated_as_product` by its tangent, ``x_dot @ w_hat.T + x_hat @ kernel_dot``."""
    return y


@_product_tangent.defjvp
def _product_tangent_jvp(primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    y, xq, wq, x, kernel = primals
    _, _, _, x_dot, kernel_dot = tangents
    product = functools.partial(
        jnp.matmul,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
        out_sharding=per_shard.explicit_sharding(y),
    )
    # The decoded operands move as x and kernel do, and the call repeats itself: third derivatives too.
    x_hat = straight_through(dequantize(xq, jnp.float32), x)
    w_hat = straight_through(dequantize(wq, jnp.float32), kernel.T)
    y_dot = product(x_dot.astype(jnp.float32), w_hat.T) + product(x_hat, kernel_dot.astype(jnp.float32))
    return _product_tangent(*primals), y_dot.astype(y.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _product_cotangent(
    static: _Static, y: jax.Array, xq: MXArray, wq: MXArray, x: jax.Array, kernel: jax.Array
) -> jax.Array:
    """:func:`_differentiated_as_product` by its cotangents, those of the backward rule (jax < 0.12)."""
    return y


def _product_cotangent_forward(
    static: _Static, y: jax.Array, xq: MXArray, wq: MXArray, x: jax.Array, kernel: jax.Array
) -> tuple[jax.Array, tuple]:
    # The call repeats itself: third derivatives too.
    return _product_cotangent(static, y, xq, wq, x, kernel), (xq, wq, x, kernel)


def _product_cotangent_backward(static: _Static, residuals: tuple, g: jax.Array) -> tuple:
    return (None, None, None, *_backward(static, residuals, g))  # y is a function of the quantized operands alone


_product_cotangent.defvjp(_product_cotangent_forward, _product_cotangent_backward)


def _backward(
    static: _Static, residuals: tuple[MXArray, MXArray, jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x_sharding, kernel_sharding = static.shardings
    xq, wq, x, kernel = residuals
    lead = tuple(range(g.ndim - 1))  # contracted over every leading axis, not flattened: a split T cannot reshape
    g_lhs, x_hat, precision = cotangent_operands(g, xq, rows=math.prod(g.shape[:-1]))  # x_hat [..., K]
    dkernel = jax.lax.dot_general(
        straight_through(x_hat, x),
        g_lhs,
        ((lead, lead), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
        out_sharding=kernel_sharding,
    )
    dx = straight_through_dx(g, wq, x.dtype, x_sharding, raw_w=kernel.T)
    return dx, dkernel.astype(kernel.dtype)


_ste.defvjp(_forward, _backward)
# Jitted so that eager calls compile once instead of op by op; inlined under an outer jit.
_ste_jit = jax.jit(_ste, static_argnums=(0,))
