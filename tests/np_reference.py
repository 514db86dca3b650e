"""Float64 NumPy reference of MXFP8 quantization and the linear product, written independently.

Scale: ``e = ceil(log2(amax / 448))`` clamped to [-127, 127], from ``np.frexp``
(``amax = m * 2**E``, ``m`` in [0.5, 1), ``448 = 0.875 * 2**9``, so
``e = E - 9 + (m > 0.875)``); ``amax == 0`` gives byte 0. Elements are
``x * 2**-e`` clipped to +-448 and rounded to nearest even at E4M3 precision
(3 mantissa bits, exponent >= -6, subnormal step 2**-9). Finite inputs only.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32


def round_e4m3(v: np.ndarray) -> np.ndarray:
    """Round float64 ``v`` (|v| <= 448) to the nearest E4M3 value, ties to even."""
    v = np.asarray(v, np.float64)
    _, exp = np.frexp(v)  # |v| = f * 2**exp, f in [0.5, 1): unbiased exponent exp - 1
    unbiased = np.maximum(exp - 1, -6)
    quantum = np.ldexp(1.0, unbiased - 3)
    return np.round(v / quantum) * quantum  # np.round: half to even; v / quantum is exact


def quantize(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """``(elements float64 [..., K], scale bytes uint8 [..., K/32])``, blocked axis moved last."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    *lead, k = x.shape
    blocks = x.reshape(*lead, k // BLOCK, BLOCK)
    amax = np.abs(blocks).max(axis=-1)
    m, big_e = np.frexp(amax)
    e = np.clip(big_e - 9 + (m > 0.875), -127, 127)
    e = np.where(amax == 0, -127, e)
    scaled = np.ldexp(blocks, -e[..., None])
    elements = round_e4m3(np.clip(scaled, -448.0, 448.0))
    return elements.reshape(*lead, k), (e + 127).astype(np.uint8)


def dequantize(elements: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``elements * 2**(scale - 127)`` per block, in float64."""
    *lead, k = elements.shape
    blocks = elements.reshape(*lead, k // BLOCK, BLOCK)
    return np.ldexp(blocks, scale.astype(np.int64)[..., None] - 127).reshape(*lead, k)


def linear(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``q(x) @ q(kernel).T + bias`` in float64, kernel ``[K, N]`` blocked along K."""
    xd = dequantize(*quantize(x))
    wd = dequantize(*quantize(kernel, axis=0))  # [N, K]
    y = xd @ wd.T
    return y if bias is None else y + np.asarray(bias, np.float64)


def linear_tolerance(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Bound on float32 accumulation error: ``2**-22 * |q(x)| @ |q(kernel)|.T`` plus a tiny floor."""
    xd = dequantize(*quantize(x))
    wd = dequantize(*quantize(kernel, axis=0))
    return 2.0**-22 * (np.abs(xd) @ np.abs(wd).T) + 1e-30
