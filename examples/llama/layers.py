"""The linear layers the Llama example uses: MXFP8 (quantized) or ``nn.Dense`` (bf16 baseline).

Parameter layouts (Hugging Face ``W`` is ``[N, K]``, torch orientation):

* ``MXFP8Dense`` (inference mode): ``kernel_q`` float8_e4m3fn ``[N, K]``, ``kernel_scale``
  uint8 ``[N, K/32]`` (exactly ModelOpt's ``weight``/``weight_scale``), ``bias`` ``[N]``.
* ``nn.Dense``: ``kernel`` ``[K, N]`` = ``W.T``, ``bias`` ``[N]``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from mxfp8_xla.flax import MXFP8Dense


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
