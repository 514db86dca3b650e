"""Pure-JAX emulation: dequantize both operands exactly, accumulate in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mxfp8_xla.mxarray import MXArray, dequantize


def matmul(x: MXArray, w: MXArray, out_dtype: jnp.dtype) -> jax.Array:
    """``dequantize(x) @ dequantize(w).T`` in float32 (``Precision.HIGHEST``: no TF32)."""
    xd = dequantize(x, jnp.float32)
    wd = dequantize(w, jnp.float32)
    out = jax.lax.dot_general(
        xd,
        wd,
        dimension_numbers=(((xd.ndim - 1,), (1,)), ((), ())),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return out.astype(out_dtype)
