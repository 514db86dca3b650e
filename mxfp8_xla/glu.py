"""SwiGLU, the gated activation in front of a Llama MLP's down projection, with every rounding written out (``jnp``).

The formula is PyTorch's ``silu(gate) * up`` (Hugging Face ``LlamaMLP``) for the halves of a fused gate and up
projection's output ``gate_up = [gate, up]``::

    s = gate / (1 + exp(-gate))      in float32, rounded to gate_up's dtype
    y = s * up                       in float32, rounded to gate_up's dtype

Each rounding is a ``reduce_precision`` (:func:`mxfp8_xla.norm.round_to`), so the result does not depend on what
XLA fuses. ``exp`` is the platform's: XLA:GPU's and the hopper backend's SwiGLU kernel's are libdevice's ``expf``;
XLA:CPU's may differ from it in the last bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mxfp8_xla.norm import round_to


def swiglu(gate_up: jax.Array) -> jax.Array:
    """``silu(gate) * up`` for ``gate_up [..., 2K] = [gate, up]``: ``[..., K]`` in ``gate_up``'s dtype."""
    gate, up = jnp.split(gate_up.astype(jnp.float32), 2, axis=-1)
    s = round_to(gate / (1.0 + jnp.exp(-gate)), gate_up.dtype)
    return round_to(s.astype(jnp.float32) * up, gate_up.dtype)
