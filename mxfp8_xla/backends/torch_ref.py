"""``"torch"`` backend: the emulation math in PyTorch, run through the DLPack bridge.

A *reference*, not a fast path: both operands are dequantized to float32 in
torch (exactly: E4M3 value times the power of two read off the E8M0 byte) and
multiplied with a float32 ``torch.matmul``, then rounded once to ``out_dtype``.
It exists to prove the bridge end to end (inside ``jit``, on XLA's stream, with
and without command buffers) on CPU and on GPUs where FlashInfer cannot run.

Differences from ``"emulation"``: only the float32 summation order (torch/BLAS
vs XLA), bounded by ``|err| <= K * 2**-23 * (|x| @ |w|.T)`` per element before
the final rounding to ``out_dtype``; and XLA:CPU flushes float32 subnormals
while torch does not (only blocks with scale bytes near 0 are affected). On GPU
torch must not use TF32 for float32 matmuls (torch's default:
``torch.backends.cuda.matmul.allow_tf32 == False``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from mxfp8_xla.interop import torch_callback
from mxfp8_xla.mxarray import MXArray
from mxfp8_xla.numerics import BLOCK_SIZE

_NAN_BITS = 0x7FC00000
_TWO_POW_M127_BITS = 0x00400000  # 2**-127: a float32 subnormal


def dequantize_torch(data: Any, scale: Any) -> Any:
    """float32 values of float8_e4m3fn ``data [R, K]`` with uint8 E8M0 ``scale [R, K/32]`` (torch)."""
    import torch

    rows, k = data.shape
    b = scale.to(torch.int32)
    # E8M0 byte b is 2**(b - 127): float32 bits b << 23 for b in 1..254.
    bits = torch.where(b == 0, _TWO_POW_M127_BITS, b << 23)
    bits = torch.where(b == 255, _NAN_BITS, bits)
    factor = bits.view(torch.float32)
    blocks = data.to(torch.float32).reshape(rows, k // BLOCK_SIZE, BLOCK_SIZE)
    return (blocks * factor.unsqueeze(-1)).reshape(rows, k)


def _reference_mm(x_data: Any, x_scale: Any, w_data: Any, w_scale: Any, *, out: Any) -> None:
    import torch

    xd = dequantize_torch(x_data, x_scale)
    wd = dequantize_torch(w_data, w_scale)
    if out.dtype == torch.float32:
        torch.matmul(xd, wd.t(), out=out)
    else:
        out.copy_(torch.matmul(xd, wd.t()))


def matmul(
    x: MXArray,
    w: MXArray,
    out_dtype: jnp.dtype,
    *,
    name: str | None = None,
) -> jax.Array:
    """``x [..., K] @ w [N, K].T`` computed by the PyTorch reference through the bridge."""
    from mxfp8_xla.backends.select import require_backend

    n, k = w.shape
    require_backend("torch", n=n, k=k, out_dtype=out_dtype, name=name)
    *lead, _ = x.shape
    m = math.prod(lead)
    if m == 0 or k == 0:  # an empty product (no rows, or K = 0: zeros, as emulation gives)
        return jnp.zeros((*lead, n), out_dtype)
    x_data = x.data.reshape(m, k)
    x_scale = x.scale.reshape(m, k // BLOCK_SIZE)
    out = torch_callback(
        _reference_mm,
        jax.ShapeDtypeStruct((m, n), jnp.dtype(out_dtype)),
        x_data,
        x_scale,
        w.data,
        w.scale,
        pass_out=True,
        row_argnums=(0, 1),
        name=f"torch:{name or 'mxfp8_matmul'}",
    )
    return out.reshape(*lead, n)
