"""Independent float64 NumPy reference of the MXFP8 rule (no jnp, no shared code)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

E4M3_MAX = 448.0


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
    return np.round(y / quantum) * quantum  # np.round is round-half-to-even


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize the last axis of finite x in blocks of 32: (uint8 E4M3 bytes, uint8 scale bytes)."""
    x = np.asarray(x, np.float64)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    amax = np.abs(blocks).max(axis=-1)
    e = np.where(amax > 0, ceil_log2(np.where(amax > 0, amax, 1.0) / E4M3_MAX), -127)
    e = np.clip(e, -127, 127)
    y = np.clip(blocks * np.ldexp(1.0, -e)[..., None], -E4M3_MAX, E4M3_MAX)
    q = round_e4m3(y)
    data = q.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)  # q is exactly representable
    return data.reshape(x.shape), (e + 127).astype(np.uint8)


def dequantize(data_bytes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float64 values of E4M3 bytes times 2**(scale - 127) per block of 32."""
    vals = data_bytes.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    blocks = vals.reshape(*vals.shape[:-1], vals.shape[-1] // 32, 32)
    out = blocks * np.ldexp(1.0, scale.astype(np.int64) - 127)[..., None]
    out[scale == 255] = np.nan
    return out.reshape(vals.shape)
