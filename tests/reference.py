"""Independent float64 NumPy reference of the MXFP8 rule (no jnp, no code shared with the library).

Scale: ``e = ceil(log2(amax / 448))`` from ``np.frexp`` (exact), clamped to [-127, 127];
``amax == 0`` gives byte 0. Elements: ``x * 2**-e`` clipped to +-448 and rounded to nearest
even at E4M3 precision (3 mantissa bits, exponent >= -6, subnormal step 2**-9). Finite input.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

E4M3_MAX = 448.0
BLOCK = 32


def ceil_log2(v: np.ndarray) -> np.ndarray:
    """Exact ceil(log2(v)) for positive float64 v via frexp (v = m * 2**ex, m in [0.5, 1))."""
    m, ex = np.frexp(v)
    return np.where(m == 0.5, ex - 1, ex)


def round_e4m3(y: np.ndarray) -> np.ndarray:
    """Round float64 |y| <= 448 to the nearest E4M3 value, ties to even."""
    mag = np.abs(y)
    _, ex = np.frexp(np.where(mag > 0, mag, 1.0))
    exponent = np.maximum(ex - 1, -6)  # E4M3 normals start at 2**-6; below: quantum 2**-9
    quantum = np.ldexp(1.0, exponent - 3)
    return np.round(y / quantum) * quantum  # np.round is round-half-to-even; y / quantum is exact


def quantize_values(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """``(E4M3 element values float64 [..., K], scale bytes uint8 [..., K/32])``, blocked axis moved last."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)
    amax = np.abs(blocks).max(axis=-1)
    e = np.where(amax > 0, ceil_log2(np.where(amax > 0, amax, 1.0) / E4M3_MAX), -127)
    e = np.clip(e, -127, 127)
    y = np.clip(blocks * np.ldexp(1.0, -e)[..., None], -E4M3_MAX, E4M3_MAX)
    return round_e4m3(y).reshape(x.shape), (e + 127).astype(np.uint8)


def quantize(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """``(E4M3 bytes uint8, scale bytes uint8)``: :func:`quantize_values` encoded."""
    values, scale = quantize_values(x, axis)
    return values.astype(ml_dtypes.float8_e4m3fn).view(np.uint8), scale  # values are representable


def dequantize_values(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``values * 2**(scale - 127)`` per block of 32, float64; scale byte 255 reads NaN."""
    blocks = np.asarray(values, np.float64).reshape(*values.shape[:-1], values.shape[-1] // BLOCK, BLOCK)
    out = blocks * np.ldexp(1.0, scale.astype(np.int64) - 127)[..., None]
    out[scale == 255] = np.nan
    return out.reshape(values.shape)


def dequantize(data_bytes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float64 values of E4M3 bytes times their block scales."""
    return dequantize_values(data_bytes.view(ml_dtypes.float8_e4m3fn).astype(np.float64), scale)


def linear(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``q(x) @ q(kernel).T + bias`` in float64, kernel ``[K, N]`` blocked along K."""
    xd = dequantize_values(*quantize_values(x))
    wd = dequantize_values(*quantize_values(kernel, axis=0))  # [N, K]
    y = xd @ wd.T
    return y if bias is None else y + np.asarray(bias, np.float64)


def linear_tolerance(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Bound on float32 accumulation error: ``2**-22 * |q(x)| @ |q(kernel)|.T`` plus a tiny floor."""
    xd = dequantize_values(*quantize_values(x))
    wd = dequantize_values(*quantize_values(kernel, axis=0))
    return 2.0**-22 * (np.abs(xd) @ np.abs(wd).T) + 1e-30


def assert_linear_matches(y, x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None) -> None:
    """A layer's float32 output ``y`` equals ``linear(x, kernel, bias)`` within float32 accumulation and rounding."""
    expected = linear(x, kernel, bias)
    tol = linear_tolerance(x, kernel) + 2.0**-23 * np.abs(expected)
    np.testing.assert_array_less(np.abs(np.asarray(y, np.float64) - expected), tol)
