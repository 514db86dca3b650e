"""The residual add and RMSNorm in front of a projection, with every rounding written out (pure ``jnp``).

The formula is Hugging Face Llama's ``LlamaRMSNorm`` (and ``examples/llama``'s)::

    h = x + delta                                      in x's dtype
    y = h * rsqrt(mean(h * h) + eps)                   in float32, rounded to x's dtype
    out = norm_weight * y                              in their result dtype

XLA may keep float32 between ops where a program casts to bf16 and back ("excess precision", on by default), so
the same formula written with ``astype`` can round differently depending on what XLA fuses. Here each rounding is
a ``reduce_precision``, which XLA keeps, so the result does not depend on fusion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def round_to(v: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """``v`` (float32) rounded to nearest even in ``dtype`` and cast to it, whatever XLA fuses around it."""
    info = jnp.finfo(dtype)
    return jax.lax.reduce_precision(v, exponent_bits=info.nexp, mantissa_bits=info.nmant).astype(dtype)


def add(x: jax.Array, delta: jax.Array) -> jax.Array:
    """``x + delta`` in ``x``'s dtype: the sum in float32, rounded once."""
    return round_to(x.astype(jnp.float32) + delta.astype(jnp.float32), x.dtype)


def rms_norm(h: jax.Array, norm_weight: jax.Array, eps: float) -> jax.Array:
    """``norm_weight * RMSNorm(h)`` over the last axis, in the result dtype of ``h`` and ``norm_weight``."""
    h32 = h.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.mean(h32 * h32, axis=-1, keepdims=True) + jnp.float32(eps))
    y = round_to(h32 * r, h.dtype)
    return round_to(norm_weight.astype(jnp.float32) * y.astype(jnp.float32), jnp.result_type(norm_weight, h))
