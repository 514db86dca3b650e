"""``mxfp8_matmul``: the MXFP8 linear-layer product ``x @ w.T``; ``add_rms_norm_matmul``: the same behind a residual
add and an RMSNorm.

Both are differentiable with respect to their float inputs, with the straight-through rule of
:mod:`mxfp8_xla.ste`: the activation's quantization passes the gradient unchanged, and ``dx = g @ dequantize(w)``
with float32 products and sums (:func:`straight_through_dx`), so a frozen MXFP8 layer backpropagates as a float
layer with the decoded weight would (adapters trained on a quantized base, input gradients). The MXFP8 weight and an
``MXArray`` activation are frozen: their gradients are zero (their fp8 codes and E8M0 scales are not trainable;
train float weights with ``mxfp8_linear_ste``, a layer's ``mode="train"``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from mxfp8_xla import norm, per_shard, varying_axes
from mxfp8_xla.backends import FUSED_ADD_NORM, TAKES_RAW_ACTIVATIONS, backend_problems, get_backend, select_backend
from mxfp8_xla.backends.flashinfer import FlashInferWeight
from mxfp8_xla.backends.select import log_weight_unswizzle
from mxfp8_xla.mxarray import (
    FLOAT_DTYPES,
    MXArray,
    check_array,
    check_float_dtype,
    check_quantizable,
    dequantize,
    quantize,
)


def labelled(function: str, name: str | None) -> str:
    """``function`` with the layer ``name`` in brackets, as errors name their source: ``mxfp8_matmul(MyLayer)``."""
    return f"{function}({name})" if name else function


def mxfp8_matmul(
    x: jax.Array | MXArray,
    w: MXArray | FlashInferWeight,
    *,
    out_dtype: DTypeLike = jnp.bfloat16,
    backend: str = "emulation",
    name: str | None = None,
    out_sharding: P | NamedSharding | None = None,
) -> jax.Array:
    """Multiply ``x [..., K]`` by the MXFP8 weight ``w [N, K]`` (torch/ModelOpt orientation).

    ``x`` is a float32/bfloat16/float16 array, quantized here with blocks of 32
    along K, or an ``MXArray``. ``w`` is an ``MXArray``, or a ``FlashInferWeight`` whose scales
    :func:`mxfp8_xla.backends.flashinfer.prepare_weight` swizzled once for ``mm_mxfp8`` (any backend takes it; the
    others undo the swizzle). Returns ``[..., N]`` in ``out_dtype``.
    ``backend``: ``"emulation"``, ``"torch"``, ``"flashinfer"``, ``"hopper"`` or ``"auto"``
    (see :mod:`mxfp8_xla.backends`); ``name`` labels the layer in backend errors.

    Operands whose types split them over ``Explicit`` mesh axes (``jax.make_mesh``'s default) are multiplied shard by
    shard (:func:`mxfp8_xla.per_shard.product`), the backend chosen and checked for one device's shapes: the output
    is split as x's rows and w's N are, and where both split K, ``out_sharding`` must say how to split the summed
    output, as ``jnp.dot``'s does. ``out_sharding``, if given, reshards the output.
    """
    where = labelled("mxfp8_matmul", name)
    if not isinstance(w, (MXArray, FlashInferWeight)):
        got = f"{type(w).__name__} with shape {tuple(jnp.shape(w))}" if hasattr(w, "shape") else type(w).__name__
        raise TypeError(
            f"{where}: w must be an MXArray [N, K] (mxfp8_xla.quantize(w) makes one) or a FlashInferWeight, got {got}"
        )
    out_dtype = check_float_dtype(f"{where}: out_dtype", out_dtype)
    if w.ndim != 2:
        raise ValueError(f"{where}: w must be 2-D [N, K], got shape {w.shape}")
    if not isinstance(x, MXArray):
        check_quantizable(x, f"{where}: x")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"{where}: x has shape {tuple(x.shape)} but w has shape {w.shape}; "
            f"the last axis of x must equal K = {w.shape[1]}"
        )
    if per_shard.is_split(*jax.tree.leaves((x, w))):
        return _split_product(x, w, out_dtype=out_dtype, backend=backend, name=name, out_sharding=out_sharding)
    # Check the name, resolve "auto" and check a forced backend now (trace time), before x is quantized
    # (here, or by a backend that quantizes in its own kernels).
    backend = select_backend(backend, n=w.shape[0], k=w.shape[1], out_dtype=out_dtype, name=name)
    dx_sharding = None if isinstance(x, MXArray) else per_shard.explicit_sharding(x)
    if not isinstance(x, MXArray):  # dx varies wherever y does: x is cast to it (in a shard_map that checks)
        x = varying_axes.cast_to(x, varying_axes.of(x, w))
    y = _product(backend, out_dtype, name, dx_sharding, x, w)
    return y if out_sharding is None else jax.sharding.reshard(y, out_sharding)


@functools.partial(jax.jit, static_argnames=("out_dtype", "backend", "name", "out_sharding"))
def _split_product(
    x: jax.Array | MXArray,
    w: MXArray | FlashInferWeight,
    *,
    out_dtype: jnp.dtype,
    backend: str,
    name: str | None,
    out_sharding: P | NamedSharding | None,
) -> jax.Array:
    """:func:`mxfp8_matmul` on operands split over Explicit mesh axes, shard by shard (jitted: eager calls compile
    once per shape)."""
    run = functools.partial(shard_product, out_dtype=out_dtype, backend=backend, name=name)
    label = labelled("mxfp8_matmul", name)
    return per_shard.product(run, x, w, out_dtype=out_dtype, out_sharding=out_sharding, label=label)


def shard_product(
    x: jax.Array | MXArray,
    w: MXArray | FlashInferWeight,
    partial: bool,
    *,
    out_dtype: jnp.dtype,
    backend: str,
    name: str | None,
) -> jax.Array:
    """One device's :func:`mxfp8_matmul` in a split computation: the backend ("auto" resolved) for its local shapes,
    its errors labelled "NAME, one device's shard"; ``partial`` sums (K split) in float32 where that backend writes
    float32, else in ``out_dtype``."""
    shard = f"{name or 'mxfp8_matmul'}, one device's shard"
    chosen = select_backend(backend, n=w.shape[0], k=w.shape[1], out_dtype=out_dtype, name=shard)
    wide = partial and not backend_problems(chosen, n=w.shape[0], k=w.shape[1], out_dtype=jnp.float32)
    return mxfp8_matmul(x, w, out_dtype=jnp.float32 if wide else out_dtype, backend=chosen, name=shard)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _product(
    backend: str,
    out_dtype: jnp.dtype,
    name: str | None,
    dx_sharding: jax.sharding.NamedSharding | None,
    x: jax.Array | MXArray,
    w: MXArray | FlashInferWeight,
) -> jax.Array:
    del dx_sharding  # the gradient's
    run = get_backend(backend)
    w = _weight_for(backend, w, out_dtype, name)
    if not isinstance(x, MXArray) and backend not in TAKES_RAW_ACTIVATIONS:
        x = quantize(x)
    return run(x, w, out_dtype, name=name)


def _product_fwd(backend, out_dtype, name, dx_sharding, x, w):
    dtype_tag = None if isinstance(x, MXArray) else jnp.zeros((0,), x.dtype)  # carries a float x's dtype
    return _product(backend, out_dtype, name, dx_sharding, x, w), (w, dtype_tag)


def _product_bwd(backend, out_dtype, name, dx_sharding, residuals, g):
    w, dtype_tag = residuals  # MXFP8 operands (w, an MXArray x) are frozen: zero cotangents
    return None if dtype_tag is None else straight_through_dx(g, w, dtype_tag.dtype, dx_sharding), None


def cotangent_operands(
    g: jax.Array, operand: MXArray, rows: int
) -> tuple[jax.Array, jax.Array, jax.lax.Precision | None]:
    """``(g, dequantize(operand), precision)`` for a straight-through gradient's product of the cotangent ``g`` (of
    ``rows`` rows, the product's M) with ``operand``'s decoded values, in float32 products and accumulation.

    A bfloat16 ``g`` of more than one row meets ``operand`` decoded to bfloat16, which holds each decoded value
    exactly (an E4M3 code times a power of two; only values below 2^-126, possible where a block's scale byte is 9 or
    less, may be rounded or flushed), so the bf16 x bf16 products accumulated in float32 are the float32 product's
    terms, and the GPU runs them on its tensor cores. Any other ``g`` is multiplied in float32 at
    ``Precision.HIGHEST``: on an H200 that measured 11x slower at 2048 rows but 2.4x faster at one row
    (docs/benchmark_log.md, twenty-third session). Pass ``preferred_element_type=float32`` to the product.
    """
    if g.dtype == jnp.bfloat16 and rows > 1:
        return g, dequantize(operand, jnp.bfloat16), None
    return g.astype(jnp.float32), dequantize(operand, jnp.float32), jax.lax.Precision.HIGHEST


@jax.custom_jvp
def straight_through(decoded: jax.Array, raw: jax.Array) -> jax.Array:
    """``decoded`` (the decoded quantization of ``raw``, of its shape), differentiated as ``raw``: its tangent is
    ``raw``'s, cast to ``decoded``'s dtype. The straight-through rule inside a backward pass, so that the backward
    pass's own derivatives (second derivatives) are the straight-through ones; where nothing differentiates the
    backward pass, ``raw`` is unused, and under ``jit`` compiles away."""
    return decoded


@straight_through.defjvp
def _straight_through_jvp(
    primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    decoded, _ = primals
    return straight_through(*primals), tangents[1].astype(decoded.dtype)  # repeated: third derivatives too


def straight_through_dx(
    g: jax.Array,
    w: MXArray | FlashInferWeight,
    dtype: jnp.dtype,
    out_sharding: jax.sharding.NamedSharding | None = None,
    raw_w: jax.Array | None = None,
) -> jax.Array:
    """The straight-through gradient of ``x @ w.T`` with respect to ``x [..., K]``: ``g [..., N] @ dequantize(w)``
    with float32 products and accumulation (:func:`cotangent_operands` picks the operands' dtypes), in ``dtype``,
    sharded as ``out_sharding`` (:func:`mxfp8_xla.per_shard.explicit_sharding` of ``x``). ``raw_w``, the float
    ``[N, K]`` that ``w`` quantizes where it is trained, gives the decoded weight its tangent
    (:func:`straight_through`)."""
    w = w.to_mxarray() if isinstance(w, FlashInferWeight) else w
    lhs, w_hat, precision = cotangent_operands(g, w, rows=math.prod(g.shape[:-1]))
    if raw_w is not None:
        w_hat = straight_through(w_hat, raw_w)
    dx = jax.lax.dot_general(
        lhs,
        w_hat,
        (((g.ndim - 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
        out_sharding=out_sharding,
    )
    return dx.astype(dtype)


_product.defvjp(_product_fwd, _product_bwd)


def _weight_for(
    backend: str, w: MXArray | FlashInferWeight, out_dtype: jnp.dtype, name: str | None
) -> MXArray | FlashInferWeight:
    """``w`` as ``backend`` reads it: a ``FlashInferWeight``'s swizzle undone for every backend but flashinfer (and
    logged, since it costs every call)."""
    if not isinstance(w, FlashInferWeight) or backend == "flashinfer":
        return w
    log_weight_unswizzle(backend, n=w.shape[0], k=w.shape[1], out_dtype=out_dtype, name=name)
    return w.to_mxarray()


def add_rms_norm_matmul(
    x: jax.Array,
    delta: jax.Array,
    norm_weight: jax.Array,
    w: MXArray | FlashInferWeight,
    *,
    eps: float,
    out_dtype: DTypeLike = jnp.bfloat16,
    backend: str = "emulation",
    name: str | None = None,
    out_sharding: P | NamedSharding | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(mxfp8_matmul(rms_norm(h, norm_weight, eps), w), h)`` with ``h = x + delta``: a pre-norm block's
    residual add, its RMSNorm and the MXFP8 projection after it (:mod:`mxfp8_xla.norm` gives the formula).

    ``x`` and ``delta`` are float arrays ``[..., K]`` of one shape and dtype (``h`` has it), ``norm_weight`` is
    ``[K]``; ``out_dtype``, ``backend``, ``name`` and ``out_sharding`` as for :func:`mxfp8_matmul`. On the
    ``hopper`` backend one bfloat16 or float32 row (a decode step at batch 1) takes one kernel launch for all of it;
    elsewhere (and on operands split over Explicit mesh axes) the sum and the norm are ``jnp`` and the product
    :func:`mxfp8_matmul`, with the same numbers up to the order of the float32 sum of squares.
    """
    where = labelled("add_rms_norm_matmul", name)
    check_quantizable(x, f"{where}: x")
    out_dtype = check_float_dtype(f"{where}: out_dtype", out_dtype)
    check_array(delta, f"{where}: delta")
    check_array(norm_weight, f"{where}: norm_weight")
    if delta.shape != x.shape or delta.dtype != x.dtype:
        raise ValueError(
            f"{where}: delta must have x's shape and dtype {tuple(x.shape)} {jnp.dtype(x.dtype).name}, "
            f"got {tuple(delta.shape)} {jnp.dtype(delta.dtype).name}"
        )
    if norm_weight.shape != x.shape[-1:] or jnp.dtype(norm_weight.dtype) not in FLOAT_DTYPES:
        raise ValueError(
            f"{where}: norm_weight must be a float32, bfloat16 or float16 array [{x.shape[-1]}] (x's last axis), got "
            f"{tuple(norm_weight.shape)} {jnp.dtype(norm_weight.dtype).name}"
        )
    if not isinstance(w, (MXArray, FlashInferWeight)):
        raise TypeError(
            f"{where}: w must be an MXArray [N, {x.shape[-1]}] (mxfp8_xla.quantize(w) makes one) or a "
            f"FlashInferWeight, got {type(w).__name__}"
        )
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"{where}: w must be [N, {x.shape[-1]}] (K = x's last axis), got shape {w.shape}")
    fused = None  # split operands (Explicit mesh axes) compose: mxfp8_matmul runs, and resolves "auto", per shard
    if not per_shard.is_split(*jax.tree.leaves((x, delta, norm_weight, w))):
        backend = select_backend(backend, n=w.shape[0], k=w.shape[1], out_dtype=out_dtype, name=name)
        w = _weight_for(backend, w, out_dtype, name)
        fused = FUSED_ADD_NORM.get(backend)
    if fused is not None and fused[0](x, delta, norm_weight, w):
        x, delta, norm_weight = varying_axes.cast_to((x, delta, norm_weight), varying_axes.of(x, delta, norm_weight, w))
        y, h = _fused_add_norm(fused[1], eps, out_dtype, name, x, delta, norm_weight, w)
        return (y if out_sharding is None else jax.sharding.reshard(y, out_sharding)), h
    h = norm.add(x, delta)
    normed = norm.rms_norm(h, norm_weight, eps)
    return mxfp8_matmul(normed, w, out_dtype=out_dtype, backend=backend, name=name, out_sharding=out_sharding), h


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused_add_norm(run, eps, out_dtype, name, x, delta, norm_weight, w):
    """One backend kernel for the add, the norm and the product; differentiated as their composition is."""
    return run(x, delta, norm_weight, eps, w, out_dtype)


def _fused_add_norm_fwd(run, eps, out_dtype, name, x, delta, norm_weight, w):
    return run(x, delta, norm_weight, eps, w, out_dtype), (x, delta, norm_weight, w)


def _fused_add_norm_bwd(run, eps, out_dtype, name, residuals, g):
    x, delta, norm_weight, w = residuals
    g_y, g_h = g

    def add_norm(x, delta, norm_weight):
        h = norm.add(x, delta)
        return norm.rms_norm(h, norm_weight, eps), h

    (normed, _), vjp = jax.vjp(add_norm, x, delta, norm_weight)
    dx = straight_through_dx(g_y, w, normed.dtype, per_shard.explicit_sharding(normed))
    return (*vjp((dx, g_h)), None)  # the MXFP8 weight is frozen


_fused_add_norm.defvjp(_fused_add_norm_fwd, _fused_add_norm_bwd)
