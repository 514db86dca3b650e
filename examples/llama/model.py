"""A compact Flax (Linen) Llama whose seven projections per block are MXFP8 layers.

RMSNorm, rotary embeddings (default and ``llama3`` scaling), grouped-query attention,
SwiGLU MLP, tied or untied head, an optional KV cache. Dimension-generic: the same code
runs the 2-layer test fixture, SmolLM2-135M and Llama-3-8B shapes. ``LlamaConfig.quantized``
picks MXFP8 projections (``kernel_q``/``kernel_scale`` [N, K]) or, for the bf16 baseline,
``nn.Dense`` (``kernel`` [K, N]) or ``DenseNK`` (``kernel_nk`` [N, K], ``bf16_layout="nk"``);
``fuse_projections`` runs q/k/v and gate/up as one projection each. Embeddings, norms and
``lm_head`` are never quantized (ModelOpt excludes them too). The head keeps the checkpoint's ``[V, D]`` layout
(``DenseNK``, as a tied head's embedding): at one row, XLA on an H200 multiplied by a ``[D, V]`` kernel as an
elementwise product written to memory and then summed, 17 us a decode step for a 4096 x 1024 head.

Parameter tree (Flax names follow the Hugging Face module names)::

    embed_tokens/embedding [V, D]
    layers_{i}/input_layernorm/weight, post_attention_layernorm/weight   [D]
    layers_{i}/self_attn/{q,k,v,o}_proj/...   layers_{i}/mlp/{gate,up,down}_proj/...
        (with ``fuse_projections``: self_attn/{qkv,o}_proj, mlp/{gate_up,down}_proj)
    norm/weight [D]
    lm_head/kernel_nk [V, D]      (absent when tie_word_embeddings)

Tensor parallelism (``parallel.py``) runs this same module under ``jax.shard_map`` with
``cfg.tp_axis`` set: each device then holds its share of the heads and MLP features, and
o_proj/down_proj add their partial sums over the model axis (``layers.row_dense``).

The model is called as ``logits, cache = model.apply({"params": p}, ids, cache=..., cache_index=...)``.
Without a cache it is a plain causal forward over ``ids``; with one (from :func:`init_cache`)
the new keys/values are written at ``cache_index`` and attention runs over the cache.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .layers import DenseNK, dense, row_dense

KVCache = tuple[tuple[jax.Array, jax.Array], ...]  # per layer: (keys, values) [B, S, KV, hd]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # HF rope_scaling items (llama3 type)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    # how to run it
    quantized: bool = True  # MXFP8 projections, else nn.Dense
    dtype: Any = jnp.bfloat16  # activations and outputs
    param_dtype: Any = jnp.bfloat16  # non-quantized params (norms, embeddings, head, nn.Dense)
    backend: str = "auto"  # mxfp8_matmul backend of the MXFP8 layers
    precision: Any = None  # for the non-MXFP8 dots (attention, head, nn.Dense)
    # the bf16 projections' weight layout: "kn" = nn.Dense ``kernel [K, N]``; "nk" = ``kernel_nk [N, K]``, the
    # checkpoint's own orientation (and the MXFP8 layers'): XLA on an H200 multiplies one row by a [4096, 1024]
    # kernel 4x slower than by a [1024, 4096] one (benchmarks/bf16_layout_probe.py)
    bf16_layout: str = "kn"
    # one projection for q, k and v (``qkv_proj``, N = (heads + 2 kv heads) * head_dim) and one for gate and up
    # (``gate_up_proj``, N = 2 * intermediate): the checkpoint's weights concatenated along N by the loader, as
    # serving engines do. Exact for MXFP8 (its scales run along K). Not with tensor parallelism.
    fuse_projections: bool = False
    # each block's residual adds and RMSNorms (but the first block's input norm) inside the MXFP8 projection after
    # them (``MXFP8Dense.with_add_rms_norm``: one kernel launch at batch 1 on the hopper backend). MXFP8 models with
    # fuse_projections only. The blocks then pass the residual stream on as (x, delta), added inside the next norm.
    fuse_norms: bool = False
    # tensor parallelism (examples/llama/parallel.py): the mesh axis the projections are split over. Set only
    # for the model run inside ``jax.shard_map``: attention then uses the local head counts and the row-parallel
    # projections (o_proj, down_proj) ``psum`` their float32 partial sums over this axis.
    tp_axis: str | None = None

    def __post_init__(self) -> None:
        if self.fuse_norms and not (self.quantized and self.fuse_projections):
            raise ValueError(
                f"LlamaConfig: fuse_norms=True needs quantized=True and fuse_projections=True (got quantized="
                f"{self.quantized}, fuse_projections={self.fuse_projections}): the norms go into qkv_proj and "
                "gate_up_proj, MXFP8 layers"
            )
        if self.fuse_projections and self.tp_axis is not None:
            raise ValueError(
                f"LlamaConfig: fuse_projections=True cannot run with tensor parallelism (tp_axis={self.tp_axis!r}): "
                "a device would need its own heads' rows of qkv_proj; load with fuse_projections=False"
            )

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def local(self, n: int, what: str) -> int:
        """``n`` split over the ``tp_axis`` devices (``n`` itself without tensor parallelism)."""
        if self.tp_axis is None:
            return n
        tp = jax.lax.axis_size(self.tp_axis)
        if n % tp:
            raise ValueError(f"{what} = {n} cannot be split over the {tp} devices of mesh axis {self.tp_axis!r}")
        return n // tp

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
        """From a Hugging Face ``config.json`` dict (transformers 4.x and 5.x spellings)."""
        rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None
        if rope_type not in (None, "default"):
            if rope_type != "llama3":
                raise NotImplementedError(f"rope type {rope_type!r} is not implemented (default, llama3 are)")
            scaling = tuple(sorted((k, v) for k, v in rope.items() if k != "rope_theta"))
        fields = {
            "vocab_size": config["vocab_size"],
            "hidden_size": config["hidden_size"],
            "intermediate_size": config["intermediate_size"],
            "num_hidden_layers": config["num_hidden_layers"],
            "num_attention_heads": config["num_attention_heads"],
            "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
            "head_dim": config.get("head_dim"),
            "rms_norm_eps": config.get("rms_norm_eps", 1e-5),
            "rope_theta": float(theta),
            "rope_scaling": scaling,
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
            "attention_bias": bool(config.get("attention_bias", False)),
            "mlp_bias": bool(config.get("mlp_bias", False)),
        }
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise NotImplementedError(f"hidden_act {act!r}: only silu (SwiGLU) is implemented")
        return cls(**(fields | overrides))


def rope_inv_freq(cfg: LlamaConfig) -> jax.Array:
    """Rotary inverse frequencies ``[hd/2]`` in float32, as transformers computes them."""
    hd = cfg.hd
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    if cfg.rope_scaling is None:
        return inv
    s = dict(cfg.rope_scaling)  # llama3: smooth interpolation between low and high frequencies
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return jnp.where(is_mid, mid, scaled)


def rope_cos_sin(cfg: LlamaConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of shape ``[..., T, hd]`` (the half-split layout of HF's ``rotate_half``)."""
    freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x [B, T, heads, hd]``; cos/sin ``[B, T, hd]``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return (x.astype(jnp.float32) * c + rotated.astype(jnp.float32) * s).astype(x.dtype)


class RMSNorm(nn.Module):
    """Hugging Face's ``LlamaRMSNorm``: ``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``, in the result dtype of
    the weight and ``x`` (float32 for a float32 weight on bf16 activations, as transformers computes it, and as
    ``mxfp8_xla.norm`` does under ``fuse_norms``)."""

    eps: float
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, *, weight_only: bool = False) -> jax.Array:
        """The normalized ``x``; with ``weight_only``, the norm's weight (for a projection that applies the norm)."""
        w = self.param("weight", nn.initializers.ones_init(), (x.shape[-1],), self.param_dtype)
        if weight_only:
            return w
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return w * y.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class PreNorm:
    """A projection's input under ``LlamaConfig.fuse_norms``: ``rms_norm(x + delta, weight)``, computed by it."""

    x: jax.Array
    delta: jax.Array
    weight: jax.Array
    eps: float


def project(layer: nn.Module, x: jax.Array | PreNorm) -> tuple[jax.Array, jax.Array | None]:
    """``(layer(x), None)``; for a :class:`PreNorm`, the MXFP8 layer behind its add and norm: ``(y, x + delta)``."""
    if isinstance(x, PreNorm):
        return layer.with_add_rms_norm(x.x, x.delta, x.weight, eps=x.eps)
    return layer(x), None


class Attention(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache, cache_index):
        """``x``: the normalized input or a :class:`PreNorm`; returns ``(out, cache, x + delta or None)``."""
        cfg = self.cfg
        b, t, _ = (x.x if isinstance(x, PreNorm) else x).shape
        hd, bias = cfg.hd, cfg.attention_bias
        # this device's heads (all of them without tensor parallelism): q/k/v are column-parallel
        h = cfg.local(cfg.num_attention_heads, "num_attention_heads")
        kv = cfg.local(cfg.num_key_value_heads, "num_key_value_heads")
        residual = None
        if cfg.fuse_projections:
            qkv, residual = project(dense((h + 2 * kv) * hd, use_bias=bias, cfg=cfg, name="qkv_proj"), x)
            q, k, v = jnp.split(qkv, [h * hd, (h + kv) * hd], axis=-1)
        else:
            q = dense(h * hd, use_bias=bias, cfg=cfg, name="q_proj")(x)
            k = dense(kv * hd, use_bias=bias, cfg=cfg, name="k_proj")(x)
            v = dense(kv * hd, use_bias=bias, cfg=cfg, name="v_proj")(x)
        q, k, v = q.reshape(b, t, h, hd), k.reshape(b, t, kv, hd), v.reshape(b, t, kv, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            ck, cv = cache
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            k, v, cache = ck, cv, (ck, cv)

        q = q.reshape(b, t, kv, h // kv, hd)  # grouped-query: each KV head serves h/kv query heads
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k, precision=cfg.precision, preferred_element_type=jnp.float32)
        scores = scores * (1.0 / math.sqrt(hd))
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v, precision=cfg.precision).reshape(b, t, h * hd)
        o = row_dense(cfg.hidden_size, use_bias=bias, cfg=cfg, name="o_proj")(out.astype(cfg.dtype))
        return o, cache, residual


class MLP(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x):
        """``x``: the normalized input or a :class:`PreNorm`; returns ``(out, x + delta or None)``."""
        cfg = self.cfg
        inter = cfg.local(cfg.intermediate_size, "intermediate_size")  # gate/up column-parallel, down row-parallel
        residual = None
        if cfg.fuse_projections:
            gate_up, residual = project(dense(2 * inter, use_bias=cfg.mlp_bias, cfg=cfg, name="gate_up_proj"), x)
            gate, up = jnp.split(gate_up, 2, axis=-1)
        else:
            gate = dense(inter, use_bias=cfg.mlp_bias, cfg=cfg, name="gate_proj")(x)
            up = dense(inter, use_bias=cfg.mlp_bias, cfg=cfg, name="up_proj")(x)
        down = row_dense(cfg.hidden_size, use_bias=cfg.mlp_bias, cfg=cfg, name="down_proj")(nn.silu(gate) * up)
        return down, residual


class Block(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache, cache_index, delta=None):
        """``(x + attention + MLP, cache)``; with ``cfg.fuse_norms`` the residual stream is ``x + delta`` (``delta``
        None in the first block), the adds happen inside the projections, and it returns ``((h, mlp out), cache)``
        for the next block to add."""
        cfg = self.cfg
        norm = dict(eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
        ln_in = RMSNorm(**norm, name="input_layernorm")
        ln_post = RMSNorm(**norm, name="post_attention_layernorm")
        if not cfg.fuse_norms:
            h, cache, _ = Attention(cfg, name="self_attn")(ln_in(x), cos, sin, mask, cache, cache_index)
            x = x + h
            h, _ = MLP(cfg, name="mlp")(ln_post(x))
            return x + h, cache
        eps = cfg.rms_norm_eps
        attention_input = ln_in(x) if delta is None else PreNorm(x, delta, ln_in(x, weight_only=True), eps)
        h, cache, residual = Attention(cfg, name="self_attn")(attention_input, cos, sin, mask, cache, cache_index)
        x = x if residual is None else residual
        out, x = MLP(cfg, name="mlp")(PreNorm(x, h, ln_post(x, weight_only=True), eps))
        return (x, out), cache


class Llama(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, *, cache: KVCache | None = None, cache_index: jax.Array | int = 0
    ) -> tuple[jax.Array, KVCache | None]:
        """``input_ids [B, T]`` -> ``(logits [B, T, V] float32, updated cache or None)``."""
        cfg = self.cfg
        b, t = input_ids.shape
        embed = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="embed_tokens"
        )
        x = embed(input_ids)

        positions = jnp.broadcast_to(cache_index + jnp.arange(t), (b, t))
        cos, sin = rope_cos_sin(cfg, positions)
        key_pos = (
            positions
            if cache is None
            else jnp.broadcast_to(jnp.arange(cache[0][0].shape[1]), (b, cache[0][0].shape[1]))
        )
        mask = key_pos[:, None, :] <= positions[:, :, None]  # causal; empty cache slots lie in the future

        new_cache, delta = [], None
        for i in range(cfg.num_hidden_layers):
            block = Block(cfg, name=f"layers_{i}")
            layer_cache = None if cache is None else cache[i]
            if cfg.fuse_norms:
                (x, delta), c = block(x, cos, sin, mask, layer_cache, cache_index, delta)
            else:
                x, c = block(x, cos, sin, mask, layer_cache, cache_index)
            new_cache.append(c)
        if delta is not None:
            x = x + delta
        x = RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name="norm")(x)
        if cfg.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = DenseNK(
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                precision=cfg.precision,
                name="lm_head",
            )(x)
        return logits.astype(jnp.float32), (None if cache is None else tuple(new_cache))


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty KV cache: per layer ``(keys, values)`` of shape ``[batch, max_len, kv_heads, head_dim]``."""
    shape = (batch, max_len, cfg.num_key_value_heads, cfg.hd)
    dtype = dtype or cfg.dtype
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_hidden_layers))
