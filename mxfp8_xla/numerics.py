"""MXFP8 format math: E8M0 block scales and E4M3 elements, computed exactly.

Everything here works on float32 *bits* where exactness matters, so results are
the same on every XLA backend, including XLA:CPU, which flushes subnormal
float32 inputs and outputs to zero (FTZ/DAZ):

* The block amax is a max over the integer bits of ``|x|`` (the integer order of
  non-negative IEEE floats equals their numeric order; NaN sorts above Inf).
* The scale exponent ``e = ceil(log2(amax / 448))`` is read off amax's exponent
  and mantissa fields. ``448 = 1.75 * 2**8``, so for ``amax = m * 2**E`` with
  ``m`` in ``[1, 2)``: ``e = E - 8 + (m > 1.75)``. No ``log2``, no division.
* Powers of two are built from bits, never with ``exp2``/``pow``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BLOCK_SIZE = 32
"""Elements sharing one scale, consecutive along the contraction axis."""
E4M3_MAX = 448.0
"""Largest finite float8_e4m3fn magnitude."""
SCALE_BIAS = 127
"""E8M0 bias: byte ``b`` means ``2**(b - 127)``."""
SCALE_MIN_EXP = -127
SCALE_MAX_EXP = 127
SCALE_NAN = 255
"""E8M0 NaN. Written for every block that holds a NaN or an Inf."""

_F32_ABS_MASK = 0x7FFFFFFF
_F32_INF_BITS = 0x7F800000
_F32_MANTISSA_MASK = 0x7FFFFF
_MANTISSA_OF_1_75 = 0x600000  # 1.75 = 1.11b: mantissa field 0b11 << 21
_F32_EXP_BIAS = 127
_E4M3_MAX_EXP = 8  # 448 = 1.75 * 2**8


def pow2(exponent: jax.Array) -> jax.Array:
    """Exactly ``2.0**exponent`` in float32 for int32 exponents in [-126, 127]."""
    biased = (exponent.astype(jnp.int32) + _F32_EXP_BIAS) << 23
    return jax.lax.bitcast_convert_type(biased, jnp.float32)


def abs_bits(x: jax.Array) -> jax.Array:
    """int32 bits of ``|x|`` for float32 ``x`` (monotone in ``|x|``; NaN is largest)."""
    return jax.lax.bitcast_convert_type(x, jnp.int32) & _F32_ABS_MASK


def scale_exponent(amax_bits: jax.Array) -> jax.Array:
    """``clamp(ceil(log2(amax / 448)), -127, 127)`` from the int32 bits of ``amax``.

    Exact for every float32 amax, subnormals included; amax == 0 gives -127.
    For non-finite amax the result is meaningless (callers mark the block NaN).
    """
    biased_exp = amax_bits >> 23
    mantissa = amax_bits & _F32_MANTISSA_MASK
    e = biased_exp - _F32_EXP_BIAS - _E4M3_MAX_EXP + (mantissa > _MANTISSA_OF_1_75)
    return jnp.clip(e, SCALE_MIN_EXP, SCALE_MAX_EXP)


def quantize_blocks(blocks: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """Quantize float32 ``blocks`` whose ``axis`` holds each block's 32 elements (``[..., nblocks, 32]`` by default)
    to ``(float8_e4m3fn data`` of ``blocks``' shape, ``uint8 scale`` without ``axis``).

    Elements are ``x * 2**-e`` clamped to +-448 and rounded to nearest even.
    A block holding a NaN or an Inf gets scale byte 255 (E8M0 NaN), so the whole
    block dequantizes to NaN; its non-finite elements are encoded as E4M3 NaN.
    """
    bits = abs_bits(blocks)
    amax_bits = jnp.max(bits, axis=axis)
    e = scale_exponent(amax_bits)
    non_finite_block = amax_bits >= _F32_INF_BITS
    scale = jnp.where(non_finite_block, SCALE_NAN, e + SCALE_BIAS).astype(jnp.uint8)

    # Finite blocks have e <= 120, so 2**-e is a normal float32.
    e = jnp.expand_dims(e, axis)
    scaled = blocks * pow2(-e)
    # Subnormal inputs: XLA:CPU reads them as zero (DAZ). Rebuild them from the
    # integer mantissa: x = m * 2**-149, so x * 2**-e = m * 2**(-149 - e). When that
    # exponent is below -126 the result is under 2**-103 and rounds to 0 in E4M3
    # either way, so clamping the exponent there keeps the result exact.
    is_subnormal = (bits > 0) & (bits <= _F32_MANTISSA_MASK)
    sub_mag = bits.astype(jnp.float32) * pow2(jnp.maximum(-149 - e, -126))
    scaled = jnp.where(is_subnormal, jnp.copysign(sub_mag, blocks), scaled)

    clipped = jnp.clip(scaled, -E4M3_MAX, E4M3_MAX)
    # E4M3 (fn) has no Inf: Inf and NaN elements both become NaN, never +-448.
    clipped = jnp.where(bits >= _F32_INF_BITS, jnp.float32(jnp.nan), clipped)
    data = clipped.astype(jnp.float8_e4m3fn)
    return data, scale


def scale_to_float(scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two float32 factors whose product is ``2**(scale - 127)`` (NaN for byte 255).

    Byte 0 means ``2**-127``, a float32 subnormal that XLA:CPU would read as zero,
    so it is split into ``2**-63 * 2**-64``; every other byte needs one factor.
    """
    s = scale.astype(jnp.int32)
    is_zero = s == 0
    hi = pow2(jnp.where(is_zero, -63, jnp.clip(s - SCALE_BIAS, -126, 127)))
    hi = jnp.where(s == SCALE_NAN, jnp.float32(jnp.nan), hi)
    lo = jnp.where(is_zero, pow2(jnp.full_like(s, -64)), jnp.float32(1.0))
    return hi, lo


def scale_to_factor(scale: jax.Array) -> jax.Array:
    """``2**(scale - 127)`` as one float32 (NaN for byte 255), for GPU kernels.

    Byte 0 gives the subnormal ``2**-127``: exact on the GPU, zero on XLA:CPU (which
    flushes subnormals; use :func:`scale_to_float`'s two factors where that matters).
    """
    hi, lo = scale_to_float(scale)
    return hi * lo
