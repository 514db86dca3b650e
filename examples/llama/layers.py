"""The linear layers the Llama example uses: MXFP8 (quantized) or ``nn.Dense`` (bf16 baseline).

Parameter layouts (Hugging Face ``W`` is ``[N, K]``, torch orientation):

* ``MXFP8Dense`` (inference mode): ``kernel_q`` float8_e4m3fn ``[N, K]``, ``kernel_scale``
  uint8 ``[N, K/32]`` (exactly ModelOpt's ``weight``/``weight_scale``), ``bias`` ``[N]``.
* ``nn.Dense``: ``kernel`` ``[K, N]`` = ``W.T``, ``bias`` ``[N]``.

Under tensor parallelism (``cfg.tp_axis`` set, see ``parallel.py``) the column-parallel
projections are plain ``dense`` layers over this device's N slice, and the row-parallel ones
(``row_dense``: o_proj, down_proj) add their float32 partial sums over the model axis with
``psum`` before the bias and the cast, as ``mxfp8_xla.sharding.row_parallel`` does.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mxfp8_xla.flax import MXFP8Dense


def dense(features: int, *, use_bias: bool, cfg: Any, name: str | None, dtype: Any = None) -> nn.Module:
    """One of the seven projections of a block: MXFP8 when ``cfg.quantized``, else ``nn.Dense``.

    ``dtype`` (default ``cfg.dtype``) is the output dtype and, for ``nn.Dense``, the compute dtype.
    """
    dtype = dtype or cfg.dtype
    if cfg.quantized:
        return MXFP8Dense(
            features,
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=cfg.param_dtype,
            backend=cfg.backend,
            mode="inference",
            name=name,
        )
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=cfg.param_dtype,
        precision=cfg.precision,
        name=name,
    )


class RowParallel(nn.Module):
    """A row-parallel projection: ``psum`` over ``axis`` of ``base``'s float32 partial sums, then bias, then cast.

    ``base`` (a bias-free ``dense`` with float32 output) holds this device's K slice of the
    weight; it shares this module's scope, so the params keep their names
    (``.../o_proj/kernel_q``, ``kernel_scale``, ``bias``). The bias is replicated and added
    once, after the reduction.
    """

    base: nn.Module
    features: int
    use_bias: bool
    axis: str
    dtype: Any
    param_dtype: Any

    def setup(self) -> None:
        nn.share_scope(self, self.base)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.psum(self.base(x), self.axis)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
            y = y + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def row_dense(features: int, *, use_bias: bool, cfg: Any, name: str) -> nn.Module:
    """o_proj and down_proj: ``dense`` without tensor parallelism, ``RowParallel`` with it."""
    if cfg.tp_axis is None:
        return dense(features, use_bias=use_bias, cfg=cfg, name=name)
    base = dense(features, use_bias=False, cfg=cfg, name=name, dtype=jnp.float32)
    return RowParallel(base, features, use_bias, cfg.tp_axis, cfg.dtype, cfg.param_dtype)
