"""``MXArray``: MXFP8 data plus E8M0 block scales, and quantize/dequantize."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mxfp8_xla import numerics

FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
"""The dtypes MXFP8 quantizes from and decodes or multiplies into."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MXArray:
    """An MXFP8 tensor: ``data`` float8_e4m3fn ``[..., K]``, ``scale`` uint8 ``[..., K // 32]``.

    Block ``j`` of a row is ``data[..., 32*j : 32*j + 32] * 2**(scale[..., j] - 127)``.
    Scale byte 255 (E8M0 NaN) makes the whole block NaN. Blocks always run along
    the last axis. A JAX pytree: pass it through ``jit``, ``vmap`` and ``tree_util``.
    """

    data: jax.Array
    scale: jax.Array

    def __post_init__(self) -> None:
        # Pytree machinery rebuilds instances with placeholders (None, tracers of
        # other ranks, axis specs) and autodiff with tangents (float0 for the uint8 scale);
        # check only when both leaves look like arrays and neither is a float0 tangent.
        if _is_arraylike(self.data) and _is_arraylike(self.scale) and not _is_tangent(self.data, self.scale):
            check_mxarray_leaves(self.data, self.scale)

    @property
    def shape(self) -> tuple[int, ...]:
        """Logical shape ``[..., K]`` (the shape of ``data``)."""
        return tuple(self.data.shape)

    @property
    def dtype(self) -> jnp.dtype:
        """Element dtype: float8_e4m3fn."""
        return self.data.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions of the logical shape."""
        return len(self.data.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data plus scales (1 + 1/32 bytes per element)."""
        return int(np.prod(self.data.shape)) + int(np.prod(self.scale.shape))


# jax.export serializes the pytrees of an exported function's arguments and results: an MXArray has no auxiliary data.
jax.export.register_pytree_node_serialization(
    MXArray,
    serialized_name="mxfp8_xla.MXArray",
    serialize_auxdata=lambda aux: b"",
    deserialize_auxdata=lambda raw: (),
)


def _is_arraylike(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _is_tangent(data: Any, scale: Any) -> bool:
    """Whether the leaves are an autodiff tangent or cotangent: float0 stands for an integer leaf's."""
    return jax.dtypes.float0 in (data.dtype, scale.dtype)


def check_mxarray_leaves(data: Any, scale: Any) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``data``/``scale`` form a valid MXArray."""
    if jnp.dtype(data.dtype) != jnp.float8_e4m3fn:
        raise TypeError(f"MXArray.data must be float8_e4m3fn, got {data.dtype} with shape {data.shape}")
    if jnp.dtype(scale.dtype) != jnp.uint8:
        raise TypeError(f"MXArray.scale must be uint8 (biased E8M0), got {scale.dtype} with shape {scale.shape}")
    if len(data.shape) == 0 or data.shape[-1] % numerics.BLOCK_SIZE:
        raise ValueError(
            f"MXArray.data shape {tuple(data.shape)}: the last axis must be a multiple of {numerics.BLOCK_SIZE}"
        )
    expected = (*data.shape[:-1], data.shape[-1] // numerics.BLOCK_SIZE)
    if tuple(scale.shape) != expected:
        raise ValueError(
            f"MXArray.scale has shape {tuple(scale.shape)}; data shape {tuple(data.shape)} needs scale shape {expected}"
        )


def check_float_dtype(what: str, dtype: Any) -> jnp.dtype:
    """``jnp.dtype(dtype)`` if it is one of :data:`FLOAT_DTYPES`, else ``TypeError`` naming ``what``.

    An output dtype is checked too: an integer one would turn a NaN or an infinity into a finite number.
    """
    if dtype is None:  # jnp.dtype(None) is float64
        raise TypeError(f"{what} is None; expected one of float32, bfloat16, float16")
    d = jnp.dtype(dtype)
    if d not in FLOAT_DTYPES:
        hint = " (float64 is not supported: use float32)" if d == jnp.float64 else ""
        raise TypeError(f"{what} is {d}; expected one of float32, bfloat16, float16{hint}")
    return d


def check_array(x: Any, name: str) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``x`` has a shape and a dtype (a JAX or NumPy array)."""
    if not (hasattr(x, "dtype") and hasattr(x, "shape")):
        raise TypeError(f"{name} must be an array (jnp.asarray makes one), got {type(x).__name__}")


def check_quantizable(x: Any, name: str = "x", axis: int = -1) -> None:
    """Raise unless ``x`` is a float32/bfloat16/float16 array whose ``axis`` is a multiple of 32."""
    check_array(x, name)
    shape = tuple(jnp.shape(x))
    check_float_dtype(f"the dtype of {name} with shape {shape}", x.dtype)
    described = f"{name} has shape {shape} and dtype {jnp.dtype(x.dtype)}"
    if not isinstance(axis, int | np.integer) or isinstance(axis, bool):
        raise TypeError(f"{described}: axis must be an int, got {axis!r}")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"{described}: axis {axis} is out of range for {len(shape)} dimensions")
    if not shape or shape[axis] % numerics.BLOCK_SIZE:
        raise ValueError(
            f"{described}: the blocked axis {axis} must be a multiple of "
            f"{numerics.BLOCK_SIZE} (MXFP8 shares one scale per {numerics.BLOCK_SIZE} elements)"
        )


def quantize(x: jax.Array, *, axis: int = -1) -> MXArray:
    """Quantize ``x`` to MXFP8 with blocks of 32 along ``axis``.

    The blocked axis is moved last in the result (``jnp.moveaxis(x, axis, -1)``),
    so a ``[K, N]`` kernel quantized with ``axis=0`` comes back as ``[N, K]``.
    Raises ``ValueError`` if that axis is not a multiple of 32, ``TypeError`` for
    dtypes other than float32, bfloat16 and float16.
    """
    check_quantizable(x, axis=axis)
    return _quantize(jnp.asarray(x), axis)


@functools.partial(jax.jit, static_argnums=1)  # eager calls compile once per shape, not op by op
def _quantize(x: jax.Array, axis: int) -> MXArray:
    x = jnp.moveaxis(x, axis, -1)
    *lead, k = x.shape
    blocks = x.astype(jnp.float32).reshape(*lead, k // numerics.BLOCK_SIZE, numerics.BLOCK_SIZE)
    data, scale = numerics.quantize_blocks(blocks)
    return MXArray(data=data.reshape(*lead, k), scale=scale)


def dequantize(a: MXArray, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Decode ``a`` to ``dtype``: exact in float32 (up to XLA:CPU's flush of results < 2**-126)."""
    if not isinstance(a, MXArray):
        raise TypeError(f"dequantize expects an MXArray, got {type(a).__name__}")
    return _dequantize(a, check_float_dtype("dequantize: dtype", dtype))


@functools.partial(jax.jit, static_argnums=1)
def _dequantize(a: MXArray, dtype: jnp.dtype) -> jax.Array:
    *lead, k = a.data.shape
    # XLA:GPU (allow_excess_precision, on by default) folds convert(f32 -> f8 -> f32) when
    # quantize and dequantize fuse in one program, silently skipping the E4M3 rounding
    # (measured on an H100, jax 0.11.2: benchmarks/check_fused_roundtrip.py). The barrier
    # keeps the fp8 values as they are.
    data, scale = jax.lax.optimization_barrier((a.data, a.scale))
    blocks = data.astype(jnp.float32).reshape(*lead, k // numerics.BLOCK_SIZE, numerics.BLOCK_SIZE)
    hi, lo = numerics.scale_to_float(scale)
    out = blocks * hi[..., None] * lo[..., None]
    return out.reshape(*lead, k).astype(dtype)
