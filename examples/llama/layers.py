"""The linear layers the Llama example uses: MXFP8 (quantized) or ``nn.Dense`` (bf16 baseline).

################################################################################################
# STAND-IN. ``MXFP8Dense`` below is a minimal local copy of the inference mode of
# ``mxfp8_xla.flax.MXFP8Dense`` (written in parallel on the ``layers`` branch): same
# constructor, same parameter names and layouts, same call. When that lands, replace the
# class with
#
#     from mxfp8_xla.flax import MXFP8Dense
#
# and nothing else changes (params loaded for this stand-in load into the real layer).
################################################################################################

Parameter layouts (Hugging Face ``W`` is ``[N, K]``, torch orientation):

* ``MXFP8Dense`` (inference mode): ``kernel_q`` float8_e4m3fn ``[N, K]``, ``kernel_scale``
  uint8 ``[N, K/32]`` (exactly ModelOpt's ``weight``/``weight_scale``), ``bias`` ``[N]``.
* ``nn.Dense``: ``kernel`` ``[K, N]`` = ``W.T``, ``bias`` ``[N]``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mxfp8_xla import MXArray, mxfp8_matmul, quantize


class MXFP8Dense(nn.Module):
    """STAND-IN for ``mxfp8_xla.flax.MXFP8Dense`` (inference mode only): ``y = x @ W.T + b``.

    ``x [..., K]`` is quantized per call (blocks of 32 along K); ``W`` is stored MXFP8.
    ``dtype``: output dtype (``None``: promote input and ``param_dtype``). ``backend``:
    an ``mxfp8_matmul`` backend; ``"auto"`` means ``"emulation"`` here.
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None  # accepted and ignored, as in the real layer
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    mode: str = "inference"
    backend: str = "auto"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.mode != "inference":
            raise NotImplementedError("the examples/llama stand-in MXFP8Dense supports mode='inference' only")
        k, n = inputs.shape[-1], self.features
        drawn: list[MXArray] = []  # one [K, N] kernel draw feeds both variables

        def init(field: str) -> jax.Array:
            if not drawn:
                w = self.kernel_init(self.make_rng("params"), (k, n), self.param_dtype)
                drawn.append(quantize(w, axis=0))  # blocks along K; comes back [N, K]
            return getattr(drawn[0], field)

        kernel_q = self.variable("params", "kernel_q", init, "data").value
        kernel_scale = self.variable("params", "kernel_scale", init, "scale").value
        out_dtype = self.dtype or jnp.promote_types(inputs.dtype, self.param_dtype)
        backend = "emulation" if self.backend == "auto" else self.backend
        y = mxfp8_matmul(inputs, MXArray(kernel_q, kernel_scale), out_dtype=out_dtype, backend=backend)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (n,), self.param_dtype)
            y = (y + bias).astype(out_dtype)
        return y


def dense(features: int, *, use_bias: bool, cfg: Any, name: str) -> nn.Module:
    """One of the seven projections of a block: MXFP8 when ``cfg.quantized``, else ``nn.Dense``."""
    if cfg.quantized:
        return MXFP8Dense(
            features,
            use_bias=use_bias,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            backend=cfg.backend,
            mode="inference",
            name=name,
        )
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        precision=cfg.precision,
        name=name,
    )
