"""Checks and the forward computation shared by the Linen and NNX layers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax.core import meta
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mxfp8_xla.backends.flashinfer import FlashInferWeight
from mxfp8_xla.backends.select import SELECTABLE
from mxfp8_xla.layout import swizzled_scale_len
from mxfp8_xla.matmul import add_rms_norm_matmul, mxfp8_matmul
from mxfp8_xla.mxarray import FLOAT_DTYPES, MXArray, check_float_dtype, quantize
from mxfp8_xla.numerics import BLOCK_SIZE
from mxfp8_xla.ste import mxfp8_linear_ste

Mode = Literal["inference", "train"]
MODES = ("inference", "train")
FP8 = jnp.dtype(jnp.float8_e4m3fn)
UINT8 = jnp.dtype(jnp.uint8)


def check_config(layer: str, mode: str, backend: str, dtype: Any, param_dtype: Any) -> None:
    """Raise ``ValueError``/``TypeError`` for a bad constructor argument (``backend`` is resolved per call)."""
    if mode not in MODES:
        raise ValueError(f"{layer}: mode must be 'inference' or 'train', got {mode!r}")
    check_float_dtype(f"{layer}: param_dtype", param_dtype)
    if dtype is not None:
        check_float_dtype(f"{layer}: dtype", dtype)
    if backend not in SELECTABLE:
        raise ValueError(f"{layer}: unknown MXFP8 backend {backend!r}; choose one of {SELECTABLE}")


def check_k(layer: str, k: int, what: str) -> None:
    """Raise ``ValueError`` unless the contraction size ``k`` is blocked by 32."""
    if k % BLOCK_SIZE:
        raise ValueError(
            f"{layer}: {what} has K = {k} input features, which is not a multiple of "
            f"{BLOCK_SIZE}; MXFP8 blocks of {BLOCK_SIZE} run along K (keep this layer unquantized)"
        )


def check_param(layer: str, name: str, value: Any, shape: tuple[int, ...], dtypes: tuple[Any, ...]) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``value`` has ``shape`` and one of ``dtypes``."""
    got_shape, got_dtype = tuple(jnp.shape(value)), jnp.dtype(value.dtype)
    if got_shape != shape:
        raise ValueError(
            f"{layer}: parameter '{name}' has shape {got_shape} and dtype {got_dtype}; expected shape {shape}"
        )
    if got_dtype not in [jnp.dtype(d) for d in dtypes]:
        names = ", ".join(str(jnp.dtype(d)) for d in dtypes)
        raise TypeError(f"{layer}: parameter '{name}' with shape {got_shape} has dtype {got_dtype}; expected {names}")


def scale_layouts(n: int, k: int) -> str:
    """The two accepted ``kernel_scale`` layouts of an ``[N, K]`` weight, with their shapes, for messages."""
    cols = k // BLOCK_SIZE
    return (
        f"shape {(n, cols)} ([N, K/32]) or {(swizzled_scale_len(n, cols),)} "
        "(FlashInfer's 1-D 128x4 layout, from swizzle_params)"
    )


def check_scale(layer: str, value: Any, n: int, k: int) -> None:
    """Raise unless ``value`` is a uint8 ``kernel_scale`` in one of its two layouts: ``[N, K/32]`` as ModelOpt stores
    it, or the 1-D buffer in FlashInfer's 128x4 layout that :func:`mxfp8_xla.flax.swizzle_params` makes."""
    cols = k // BLOCK_SIZE
    got_shape, got_dtype = tuple(jnp.shape(value)), jnp.dtype(value.dtype)
    if got_shape not in ((n, cols), (swizzled_scale_len(n, cols),)):
        raise ValueError(
            f"{layer}: parameter 'kernel_scale' has shape {got_shape} and dtype {got_dtype}; expected "
            f"{scale_layouts(n, k)}"
        )
    check_param(layer, "kernel_scale", value, got_shape, (UINT8,))


def kernel_metadata_problem(kernel: Any, ndim: int) -> str | None:
    """``None`` if the Linen metadata box of a ``[..., K, N]`` kernel (if any) can be carried over to ``kernel_q``
    and ``kernel_scale`` by :func:`transposed_box`, else why not."""
    if not isinstance(kernel, meta.AxisMetadata):
        return None
    if not isinstance(kernel, meta.Partitioned):
        return (
            f"the kernel is boxed in {type(kernel).__name__}: only nn.Partitioned metadata (nn.with_partitioning, "
            "nn.LogicallyPartitioned from nn.with_logical_partitioning) can be carried over to kernel_q/kernel_scale, "
            "whose axes are the kernel's transposed; unbox it first (flax.core.meta.unbox)"
        )
    if len(tuple(kernel.names)) > ndim:
        return f"the kernel's {type(kernel).__name__} names {tuple(kernel.names)} are more than its {ndim} axes"
    return None


def transposed_box(kernel: Any, ndim: int) -> Callable[[Any], Any]:
    """The function that boxes ``kernel_q [..., N, K]`` and ``kernel_scale [..., N, K/32]`` like the ``[..., K, N]``
    ``kernel`` is boxed: the identity for a plain array; for an ``nn.Partitioned`` (or a subclass such as
    ``nn.LogicallyPartitioned``) the same box, mesh and rules with the last two axis names swapped, so N's name goes
    first and K's name goes to K and to K/32 (a split of K/32 must keep whole 32-blocks, like K's: the row-parallel
    rule of docs/sharding.md). Check :func:`kernel_metadata_problem` first."""
    if not isinstance(kernel, meta.Partitioned):
        return lambda value: value
    names = transposed_names(kernel.names, ndim)
    return lambda value: kernel.replace_boxed(value).replace(names=names)


def transposed_names(names: Sequence[Any], ndim: int) -> tuple[Any, ...]:
    """The axis names (or mesh axes) of a ``[..., K, N]`` kernel, padded with ``None`` to ``ndim`` (names left off
    at the end are replicated axes), with the last two swapped: those of ``kernel_q [..., N, K]`` and of
    ``kernel_scale [..., N, K/32]``, K's name on K/32 too. At most ``ndim`` names (the callers check)."""
    names = (*names, *(None,) * (ndim - len(names)))
    return (*names[:-2], names[-1], names[-2])


def inference_weight(kernel_q: jax.Array, kernel_scale: jax.Array) -> MXArray | FlashInferWeight:
    """The weight ``mxfp8_matmul`` takes from inference params: a ``FlashInferWeight`` where the scales are swizzled
    already (1-D), else an ``MXArray``."""
    if kernel_scale.ndim == 1:
        return FlashInferWeight(data=kernel_q, scale_swizzled=kernel_scale)
    return MXArray(data=kernel_q, scale=kernel_scale)


def prepare_input(layer: str, x: Any, in_features: int | None = None) -> jax.Array:
    """``x`` as a JAX array, with its dtype and last axis checked."""
    if isinstance(x, MXArray):
        raise TypeError(
            f"{layer}: input is an MXArray with shape {x.shape}; layers take float arrays and quantize them "
            "(mxfp8_xla.mxfp8_matmul multiplies an MXArray activation)"
        )
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{layer}: input must have at least 1 dimension [..., K], got a scalar")
    if x.dtype not in FLOAT_DTYPES and not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"{layer}: input with shape {tuple(x.shape)} has dtype {x.dtype}; expected float32, "
            f"bfloat16 or float16 (or an integer dtype)"
        )
    if in_features is not None and x.shape[-1] != in_features:
        raise ValueError(
            f"{layer}: input has shape {tuple(x.shape)} and dtype {x.dtype}; expected last dimension "
            f"{in_features} (in_features, the K of the kernel)"
        )
    return x


def output_dtype(layer: str, x: jax.Array, dtype: Any, param_dtype: Any) -> jnp.dtype:
    """Output dtype as in ``nn.Dense``: ``dtype`` or the promotion of input and param dtypes."""
    if dtype is not None:
        return jnp.dtype(dtype)
    return check_float_dtype(f"{layer}: the promoted dtype of input and params", jnp.result_type(x, param_dtype))


@jax.jit
def quantize_kernel(kernel: jax.Array) -> MXArray:
    """``quantize(kernel [..., K, N], axis=-2)``: MXFP8 ``[..., N, K]`` (jitted: compiles once)."""
    return quantize(kernel, axis=-2)


@functools.partial(jax.jit, static_argnames=("out_dtype", "backend", "name", "out_sharding"))
def forward(
    x: jax.Array,
    *,
    kernel: jax.Array | None = None,
    kernel_q: jax.Array | None = None,
    kernel_scale: jax.Array | None = None,
    bias: jax.Array | None,
    out_dtype: jnp.dtype,
    backend: str,
    name: str | None = None,
    out_sharding: P | NamedSharding | None = None,
) -> jax.Array:
    """``x @ W + bias`` in MXFP8, from ``kernel [K, N]`` (train) or ``kernel_q/scale [N, K]``; ``out_sharding``
    as :func:`mxfp8_matmul`'s.

    Both paths quantize ``x`` (blocks along K) and the weight identically and make
    the same ``mxfp8_matmul`` call, so for the same weights they agree bit for bit.
    Jitted (inlined under an outer ``jit``) so eager calls compile once.
    """
    if x.dtype not in FLOAT_DTYPES:  # integer inputs
        x = x.astype(out_dtype)
    product = dict(out_dtype=out_dtype, backend=backend, name=name, out_sharding=out_sharding)
    if kernel is not None:
        y = mxfp8_linear_ste(x, kernel, **product)
    else:
        y = mxfp8_matmul(x, inference_weight(kernel_q, kernel_scale), **product)
    return add_bias(y, bias, out_dtype)


def add_bias(y: jax.Array, bias: jax.Array | None, out_dtype: jnp.dtype) -> jax.Array:
    """``y + bias`` over the last axis in ``out_dtype`` (``y`` itself without a bias)."""
    return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,)).astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("eps", "out_dtype", "backend", "name", "out_sharding"))
def forward_add_rms_norm(
    x: jax.Array,
    delta: jax.Array,
    norm_weight: jax.Array,
    *,
    eps: float,
    kernel_q: jax.Array,
    kernel_scale: jax.Array,
    bias: jax.Array | None,
    out_dtype: jnp.dtype,
    backend: str,
    name: str | None = None,
    out_sharding: P | NamedSharding | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(rms_norm(x + delta) @ W + bias, x + delta)`` in MXFP8 (:func:`add_rms_norm_matmul`), inference params."""
    w = inference_weight(kernel_q, kernel_scale)
    product = dict(out_dtype=out_dtype, backend=backend, name=name, out_sharding=out_sharding)
    y, h = add_rms_norm_matmul(x, delta, norm_weight, w, eps=eps, **product)
    return add_bias(y, bias, out_dtype), h
