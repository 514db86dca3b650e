"""``python -m mxfp8_xla``: quantize a random layer, run the emulation matmul under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mxfp8_xla.matmul import mxfp8_matmul
from mxfp8_xla.mxarray import quantize


def _rel_err(got: jax.Array, want: jax.Array) -> float:
    got64, want64 = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got64 - want64) / np.linalg.norm(want64))


def main(m: int = 64, k: int = 1024, n: int = 512, seed: int = 0) -> int:
    """Quantize a random ``[n, k]`` layer, multiply ``m`` random rows by it, print the errors and sizes."""
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (m, k), jnp.float32)
    w = jax.random.normal(kw, (n, k), jnp.float32) * k**-0.5  # [N, K], torch orientation

    w_q = jax.jit(quantize)(w)
    y = jax.jit(mxfp8_matmul, static_argnames=("out_dtype", "backend"))(x, w_q, out_dtype=jnp.float32)
    y_f32 = jnp.dot(x, w.T, precision=jax.lax.Precision.HIGHEST)
    y_bf16 = jnp.dot(x.astype(jnp.bfloat16), w.T.astype(jnp.bfloat16), preferred_element_type=jnp.float32)

    print(f"mxfp8_xla demo on {jax.devices()[0].platform}: x [{m}, {k}] @ w[{n}, {k}].T, emulation backend")
    print(f"  relative error, MXFP8 vs float32 reference: {_rel_err(y, y_f32):.4e}")
    print(f"  relative error, bf16  vs float32 reference: {_rel_err(y_bf16, y_f32):.4e}")
    print(
        f"  weight bytes: float32 {w.nbytes:,}  bf16 {w.nbytes // 2:,}  MXFP8 {w_q.nbytes:,} "
        f"(data {w_q.data.nbytes:,} + scales {w_q.scale.nbytes:,}; {w.nbytes / 2 / w_q.nbytes:.2f}x "
        f"smaller than bf16)"
    )
    return 0
