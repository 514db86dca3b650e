"""Tensor parallelism for the Llama example: the whole model under ``jax.shard_map`` on a ``("data", "model")`` mesh.

Megatron's split, with the MXFP8 rules of :mod:`mxfp8_xla.sharding`:

* q/k/v_proj and gate/up_proj are **column-parallel**: ``kernel_q [N, K]`` and
  ``kernel_scale [N, K/32]`` (and the bias) are split along N, so each device holds
  ``num_heads/tp`` query heads, ``num_kv_heads/tp`` KV heads and ``intermediate/tp``
  MLP features, and runs attention over its own heads;
* o_proj and down_proj are **row-parallel**: ``kernel_q`` split along K, ``kernel_scale``
  along K/32 (whole 32-element blocks on each device, checked), float32 partial sums
  reduced with ``psum`` over the model axis, then the replicated bias, then the cast
  (``layers.RowParallel``);
* embeddings, norms and lm_head are replicated; the batch is split over ``"data"``; the
  KV cache ``[B, S, kv_heads, hd]`` is split along B over ``"data"`` and along the KV heads
  over ``"model"``.

For the ``nn.Dense`` baseline (``cfg.quantized=False``) ``kernel [K, N]`` gets the
transposed specs; the ``"nk"`` bf16 layout's ``kernel_nk [N, K]`` splits as ``kernel_q``. Use::

    mesh = Mesh(np.array(jax.devices()).reshape(data, model), ("data", "model"))
    params = shard_params(cfg, params, mesh)                   # checks, then places each leaf
    logits = forward(cfg, params, ids, mesh=mesh)              # examples.llama.generate
    ids = generate(cfg, params, prompt, max_new_tokens=16, mesh=mesh)

Checks run before any XLA work and raise ``ValueError`` naming the layer, the weight shape
and the device count: head counts that do not divide over the model axis, an N that does
not, a row-parallel K slice that is not a whole number of 32-element blocks, a batch that
does not divide over the data axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mxfp8_xla import sharding as sh

from .loader import ATTN, MLP, N_AXIS
from .model import KVCache, Llama, LlamaConfig

DATA, MODEL = "data", "model"
COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW = ("o_proj", "down_proj")


def _kind(path: tuple[str, ...]) -> str | None:
    """``"column"``, ``"row"`` or ``None`` (replicated) for a param at ``path``."""
    if len(path) >= 2 and path[-2] in COLUMN:
        return "column"
    if len(path) >= 2 and path[-2] in ROW:
        return "row"
    return None


def leaf_spec(path: tuple[str, ...], model_axis: str = MODEL) -> P:
    """The ``PartitionSpec`` of the param at ``path`` (e.g. ``("layers_0", "self_attn", "o_proj", "kernel_q")``)."""
    kind, leaf = _kind(path), path[-1]
    m = model_axis
    if kind is None:
        return P()
    if leaf == "bias":  # split with N; a row-parallel bias is added once, after the psum
        return P(m) if kind == "column" else P()
    if leaf in N_AXIS:  # 2-D: column-parallel splits N, row-parallel splits K (the other axis)
        split = N_AXIS[leaf] if kind == "column" else 1 - N_AXIS[leaf]
        return P(*(m if axis == split else None for axis in range(2)))
    raise ValueError(f"tensor parallelism: unknown projection param {'/'.join(path)}")


def param_specs(params: Mapping[str, Any], model_axis: str = MODEL) -> Any:
    """A pytree of ``PartitionSpec`` mirroring ``params``."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: leaf_spec(tuple(k.key for k in kp), model_axis), params)


def check(cfg: LlamaConfig, params: Mapping[str, Any], tp: int, model_axis: str = MODEL) -> None:
    """Raise ``ValueError`` unless ``Llama(cfg)`` with ``params`` splits over ``tp`` devices of ``model_axis``."""
    if cfg.fuse_projections:
        raise ValueError(
            "tensor parallelism: fuse_projections=True is not supported (a device would need its own heads' rows "
            "of qkv_proj); load the params with fuse_projections=False"
        )
    h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    if h % tp or kv % tp:
        raise ValueError(
            f"tensor parallelism: {h} attention heads and {kv} KV heads cannot be split over the {tp} devices "
            f"of mesh axis {model_axis!r}: both head counts must be multiples of {tp}"
        )
    for i in range(cfg.num_hidden_layers):  # in forward order, so the first offending layer is named
        for group, projections in (("self_attn", ATTN), ("mlp", MLP)):
            for proj in projections:
                p, name = params[f"layers_{i}"][group][proj], f"layers_{i}/{group}/{proj}"
                nk = p["kernel_q"] if "kernel_q" in p else p.get("kernel_nk")
                shape = nk.shape if nk is not None else p["kernel"].shape[::-1]  # [N, K]
                if proj in COLUMN:
                    sh.check_column_parallel(shape, tp, name)
                elif "kernel_q" in p:
                    sh.check_row_parallel(shape, tp, name)  # whole 32-element scale blocks per device
                elif shape[1] % tp:
                    raise ValueError(
                        f"row-parallel {name}: weight [N={shape[0]}, K={shape[1]}] cannot be split along K over "
                        f"{tp} devices: K is not a multiple of {tp}"
                    )


def shard_params(cfg: LlamaConfig, params: Mapping[str, Any], mesh: Mesh, model_axis: str = MODEL) -> Any:
    """Check, then place ``params`` on ``mesh``: projections split over ``model_axis``, the rest replicated."""
    check(cfg, params, mesh.shape[model_axis], model_axis)
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(params, model_axis))
    return jax.device_put(params, shardings)


def sharded_apply(
    cfg: LlamaConfig, mesh: Mesh, model_axis: str = MODEL, data_axis: str | None = DATA
) -> Callable[..., tuple[jax.Array, KVCache | None]]:
    """``apply(params, ids, cache=None, cache_index=0) -> (logits, cache)``: ``Llama(cfg)`` split over ``mesh``.

    Like ``Llama(cfg).apply({"params": params}, ids, cache=..., cache_index=...)`` and with the
    same global shapes (the cache from ``init_cache(cfg, ...)``), run under ``jax.shard_map`` with its varying-axes
    check on (the default): every MXFP8 product inside types its output as JAX's own ops do
    (``mxfp8_xla.varying_axes``).
    ``data_axis`` is dropped when ``mesh`` has no such axis (the batch is then replicated).
    """
    if data_axis not in mesh.axis_names:
        data_axis = None
    tp = mesh.shape[model_axis]
    model = Llama(dataclasses.replace(cfg, tp_axis=model_axis))
    logits_spec = P(data_axis, None, None)
    cache_spec = P(data_axis, None, model_axis, None)  # [B, S, kv_heads, hd]

    def apply(params: Any, ids: jax.Array, cache: KVCache | None = None, cache_index: Any = 0):
        check(cfg, params, tp, model_axis)
        dp = mesh.shape[data_axis] if data_axis else 1
        if ids.shape[0] % dp:
            raise ValueError(
                f"tensor parallelism: batch {ids.shape[0]} cannot be split over the {dp} devices of mesh axis "
                f"{data_axis!r}"
            )
        index = jnp.asarray(cache_index, jnp.int32)
        specs = param_specs(params, model_axis)

        if cache is None:

            def local(p, i, c):
                return model.apply({"params": p}, i, cache_index=c)[0]

            fn = jax.shard_map(local, mesh=mesh, in_specs=(specs, P(data_axis, None), P()), out_specs=logits_spec)
            return fn(params, ids, index), None

        def local_cached(p, i, kv, c):
            return model.apply({"params": p}, i, cache=kv, cache_index=c)

        kv_specs = jax.tree.map(lambda _: cache_spec, cache)
        fn = jax.shard_map(
            local_cached,
            mesh=mesh,
            in_specs=(specs, P(data_axis, None), kv_specs, P()),
            out_specs=(logits_spec, kv_specs),
        )
        return fn(params, ids, cache, index)

    return apply
