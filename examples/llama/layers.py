"""The linear layers the Llama example uses: MXFP8 (quantized) or bf16 (``nn.Dense`` or ``DenseNK``).

Parameter layouts (Hugging Face ``W`` is ``[N, K]``, torch orientation):

* ``MXFP8Dense`` (inference mode): ``kernel_q`` float8_e4m3fn ``[N, K]``, ``kernel_scale``
  uint8 ``[N, K/32]`` (exactly ModelOpt's ``weight``/``weight_scale``), ``bias`` ``[N]``.
* ``nn.Dense`` (``cfg.bf16_layout == "kn"``): ``kernel`` ``[K, N]`` = ``W.T``, ``bias`` ``[N]``.
* ``DenseNK`` (``cfg.bf16_layout == "nk"``): ``kernel_nk`` ``[N, K]`` = ``W``, ``bias`` ``[N]``.

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


class DenseNK(nn.Module):
    """``y = x @ W.T + b`` with the weight kept as ``kernel_nk [N, K]``, as checkpoints store it.

    Computed in ``dtype`` with ``precision``, as ``nn.Dense``; the two differ only in the kernel's layout.
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
        w = self.param("kernel_nk", init, (self.features, x.shape[-1]), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, w)
        contract = (((x.ndim - 1,), (1,)), ((), ()))
        y = jax.lax.dot_general(x.astype(dtype), w.astype(dtype), contract, precision=self.precision)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype).astype(dtype)
        return y


BF16_LAYOUTS = {"kn": nn.Dense, "nk": DenseNK}


def dense(features: int, *, use_bias: bool, cfg: Any, name: str | None, dtype: Any = None) -> nn.Module:
    """One of a block's projections: MXFP8 when ``cfg.quantized``, else a bf16 layer in
    ``cfg.bf16_layout`` (``nn.Dense`` for ``"kn"``, :class:`DenseNK` for ``"nk"``).

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
    if cfg.bf16_layout not in BF16_LAYOUTS:
        raise ValueError(f"LlamaConfig.bf16_layout={cfg.bf16_layout!r}: expected one of {sorted(BF16_LAYOUTS)}")
    return BF16_LAYOUTS[cfg.bf16_layout](
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
