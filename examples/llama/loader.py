"""Hugging Face / ModelOpt tensor names -> the Flax Llama's params.

``params_from_hf`` takes a mapping of HF names to ``MXArray`` (ModelOpt-quantized linears,
as :func:`mxfp8_xla.checkpoint.load_modelopt` returns them) or float arrays (a bf16
checkpoint, a GGUF converted to HF names, ...) and builds the param tree of
``Llama(cfg)``:

* ``cfg.quantized``: each projection becomes ``{kernel_q: data [N, K], kernel_scale:
  scale [N, K/32]}``; float weights are quantized here with ``mxfp8_xla.quantize``
  (blocks of 32 along K: the bytes ModelOpt would export).
* not ``cfg.quantized``: ``{kernel: W.T}`` ([K, N], nn.Dense) or, with ``cfg.bf16_layout == "nk"``,
  ``{kernel_nk: W}`` ([N, K]); ``MXArray`` weights
  dequantized exactly first.
* ``cfg.fuse_projections``: q/k/v_proj become one ``qkv_proj`` and gate/up_proj one ``gate_up_proj``,
  their params concatenated along N (:func:`concat_along_n`).
* ``model.embed_tokens.weight`` -> ``embed_tokens/embedding``; norms -> ``.../weight``;
  ``lm_head.weight`` -> ``lm_head/kernel_nk`` (= W, [V, D]), absent when the head is tied.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from mxfp8_xla import MXArray, dequantize, quantize

from .model import LlamaConfig

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
N_AXIS = {"kernel_q": 0, "kernel_scale": 0, "kernel_nk": 0, "bias": 0, "kernel": 1}  # nn.Dense's kernel is [K, N]


def concat_along_n(projections: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """One projection's params from several that read the same input, their outputs side by side (N).

    Exact for MXFP8: each output row keeps its own scales, which run along K.
    """
    return {leaf: jnp.concatenate([p[leaf] for p in projections], axis=N_AXIS[leaf]) for leaf in projections[0]}


def params_from_hf(tensors: Mapping[str, Any], cfg: LlamaConfig) -> dict[str, Any]:
    """Build ``Llama(cfg)`` params from HF-named tensors (see the module docstring)."""
    used: set[str] = set()

    def get(name: str) -> Any:
        if name not in tensors:
            raise KeyError(f"tensor {name!r} is missing from the checkpoint (needed by the Llama example)")
        used.add(name)
        return tensors[name]

    def plain(name: str) -> jax.Array:
        value = get(name)
        if isinstance(value, MXArray):
            raise ValueError(f"{name!r} is MXFP8-quantized but the Llama example keeps it unquantized")
        return jnp.asarray(value, cfg.param_dtype)

    def linear(module: str, bias: bool) -> dict[str, jax.Array]:
        w = get(module + ".weight")
        if cfg.quantized:
            q = w if isinstance(w, MXArray) else quantize(jnp.asarray(w))
            p = {"kernel_q": q.data, "kernel_scale": q.scale}
        else:
            wf = dequantize(w, jnp.float32) if isinstance(w, MXArray) else jnp.asarray(w)
            nk = cfg.bf16_layout == "nk"
            p = {"kernel_nk": wf.astype(cfg.param_dtype)} if nk else {"kernel": wf.T.astype(cfg.param_dtype)}
        if bias:
            p["bias"] = plain(module + ".bias")
        return p

    def group(prefix: str, names: tuple[str, ...], bias: bool) -> dict[str, dict[str, jax.Array]]:
        out = {p: linear(f"{prefix}.{p}", bias) for p in names}
        if cfg.fuse_projections:
            for fused, parts in FUSED.items():
                if parts[0] in out:
                    out[fused] = concat_along_n([out.pop(p) for p in parts])
        return out

    params: dict[str, Any] = {"embed_tokens": {"embedding": plain("model.embed_tokens.weight")}}
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}"
        params[f"layers_{i}"] = {
            "input_layernorm": {"weight": plain(f"{pre}.input_layernorm.weight")},
            "post_attention_layernorm": {"weight": plain(f"{pre}.post_attention_layernorm.weight")},
            "self_attn": group(f"{pre}.self_attn", ATTN, cfg.attention_bias),
            "mlp": group(f"{pre}.mlp", MLP, cfg.mlp_bias),
        }
    params["norm"] = {"weight": plain("model.norm.weight")}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = {"kernel_nk": plain("lm_head.weight")}
    unused = sorted(n for n in tensors if n not in used and not n.endswith("rotary_emb.inv_freq"))
    if unused:
        raise ValueError(f"{len(unused)} checkpoint tensors are not used by the Llama example: {unused[:5]}")
    return params


def load_llama(path: str | Path, **overrides: Any) -> tuple[LlamaConfig, dict[str, Any]]:
    """Config and params of a ModelOpt MXFP8 Llama directory (``overrides`` go to ``LlamaConfig``)."""
    from mxfp8_xla.checkpoint import load_modelopt

    cfg_defaults = {"dtype": jnp.bfloat16, "param_dtype": jnp.bfloat16} | overrides
    ckpt = load_modelopt(path, dtype=cfg_defaults["param_dtype"])
    cfg = LlamaConfig.from_hf(ckpt.config, **cfg_defaults)
    return cfg, params_from_hf(ckpt.tensors, cfg)
