"""SwiGLU, the gated activation in front of a Llama MLP's down projection, with every rounding written out (``jnp``).

The formula is PyTorch's ``silu(gate) * up`` (Hugging Face ``LlamaMLP``; ``torch.nn.functional.silu`` computes
``x / (1 + exp(-x))`` in float32 and rounds once)::

    s = gate / (1 + exp(-gate))      in float32, rounded to the operands' dtype
    y = s * up                       in float32, rounded to the operands' dtype

Each rounding is a ``reduce_precision`` (:func:`mxfp8_xla.norm.round_to`), so the result does not depend on what
XLA fuses. ``exp`` is the platform's: XLA:GPU's and the hopper backend's SwiGLU kernel's are libdevice's ``expf``;
XLA:CPU's may differ from it in the last bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mxfp8_xla.norm import round_to


def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """``silu(gate) * up`` in the dtype of ``gate`` and ``up`` (one shape and dtype)."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"swiglu: gate {tuple(gate.shape)} {jnp.dtype(gate.dtype).name} and up {tuple(up.shape)} "
            f"{jnp.dtype(up.dtype).name} must have one shape and dtype"
        )
    g = gate.astype(jnp.float32)
    s = round_to(g / (1.0 + jnp.exp(-g)), gate.dtype)
    return round_to(s.astype(jnp.float32) * up.astype(jnp.float32), gate.dtype)


def swiglu_halves(gate_up: jax.Array) -> jax.Array:
    """:func:`swiglu` of the halves of ``gate_up [..., 2K] = [gate, up]`` (a fused gate and up projection's output):
    ``[..., K]``."""
    return swiglu(*jnp.split(gate_up, 2, axis=-1))
