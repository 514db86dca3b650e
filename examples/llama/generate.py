"""Generation with a KV cache under ``jax.jit``: one prefill, then a ``lax.scan`` of decode steps.

Greedy (``temperature=0``) or sampled (``temperature > 0``, optional ``top_k``). The whole
loop is one jitted function per (config, prompt shape, ``max_new_tokens``, sampling
settings); the cache holds ``prompt_len + max_new_tokens`` positions.

``mesh`` (optional, a ``("data", "model")`` :class:`jax.sharding.Mesh`): run the model
tensor-parallel over it (``parallel.py``); params placed with ``parallel.shard_params``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mxfp8_xla import DECODE_LOOP_COMPILER_OPTIONS

from .model import Llama, LlamaConfig, init_cache
from .parallel import sharded_apply


def model_apply(cfg: LlamaConfig, mesh: Mesh | None = None):
    """``apply(params, ids, cache=None, cache_index=0) -> (logits, cache)`` on one device or split over ``mesh``."""
    if mesh is not None:
        return sharded_apply(cfg, mesh)
    model = Llama(cfg)
    return lambda params, ids, cache=None, cache_index=0: model.apply(
        {"params": params}, ids, cache=cache, cache_index=cache_index
    )


def _pick(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
    """Next token from the last-position logits ``[B, V]``."""
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _generate_steps(
    cfg: LlamaConfig,
    params: Any,
    prompt: jax.Array,
    key: jax.Array | None = None,
    *,
    max_new_tokens: int,
    prompt_len: jax.Array | int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    mesh: Mesh | None = None,
) -> jax.Array:
    """``prompt [B, T]`` -> ``[B, T + max_new_tokens]`` token ids, jitted.

    ``prompt_len`` (traced, so one compilation serves every length up to ``T``): the
    prompt is ``prompt[:, :prompt_len]`` (the rest of the buffer is ignored) and the result
    is valid up to ``prompt_len + max_new_tokens`` (zeros after). Causal masking keeps the
    ignored tail out of the prefill, and decoding overwrites its cache slots before any
    query can see them. After ``eos_id`` (if given) a sequence keeps emitting ``eos_id``.

    Called on arrays, it is compiled with :data:`mxfp8_xla.DECODE_LOOP_COMPILER_OPTIONS` (the decode loop writes
    each step's keys and values into the cache, and the option keeps XLA's asynchronous copy out of it). JAX takes
    compiler options only on the outermost ``jax.jit``: called inside another one (on tracers), it is traced into
    that one, which should then be compiled with those options itself.
    """
    apply = model_apply(cfg, mesh)
    b, t = prompt.shape
    n = jnp.int32(t if prompt_len is None else prompt_len)
    key = jax.random.key(0) if key is None else key
    cache = init_cache(cfg, b, t + max_new_tokens)
    logits, cache = apply(params, prompt, cache=cache, cache_index=0)  # prefill
    last = jax.lax.dynamic_index_in_dim(logits, n - 1, axis=1, keepdims=False)
    key, sub = jax.random.split(key)
    first = _pick(last, sub, temperature, top_k)
    done = jnp.zeros((b,), bool) if eos_id is None else first == eos_id

    def step(carry, _):
        token, cache, index, key, done = carry
        logits, cache = apply(params, token[:, None], cache=cache, cache_index=index)
        key, sub = jax.random.split(key)
        nxt = _pick(logits[:, -1], sub, temperature, top_k)
        if eos_id is not None:
            nxt = jnp.where(done, eos_id, nxt)
            done = done | (nxt == eos_id)
        return (nxt, cache, index + 1, key, done), nxt

    _, rest = jax.lax.scan(step, (first, cache, n, key, done), None, length=max_new_tokens - 1)
    new = jnp.concatenate([first[:, None], rest.T], axis=1)
    out = jnp.zeros((b, t + max_new_tokens), jnp.int32)
    out = out.at[:, :t].set(jnp.where(jnp.arange(t) < n, prompt.astype(jnp.int32), 0))
    return jax.lax.dynamic_update_slice(out, new, (0, n))


_STATIC = ("cfg", "max_new_tokens", "temperature", "top_k", "eos_id", "mesh")
_generate = jax.jit(_generate_steps, static_argnames=_STATIC, compiler_options=DECODE_LOOP_COMPILER_OPTIONS)
_generate_inside_jit = jax.jit(_generate_steps, static_argnames=_STATIC)


@functools.wraps(_generate_steps)
def generate(*args: Any, **kwargs: Any) -> jax.Array:
    traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((args, kwargs)))
    return (_generate_inside_jit if traced else _generate)(*args, **kwargs)


generate.__name__ = generate.__qualname__ = "generate"  # wraps() gave it _generate_steps' signature and docstring
generate.lower = _generate.lower  # as a jitted function's: the program generate() compiles on arrays


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"))
def forward(cfg: LlamaConfig, params: Any, input_ids: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """Logits ``[B, T, V]`` of a plain causal forward (no cache)."""
    return model_apply(cfg, mesh)(params, input_ids)[0]


def greedy_without_cache(
    cfg: LlamaConfig, params: Any, prompt: jax.Array, max_new_tokens: int, mesh: Mesh | None = None
) -> jax.Array:
    """Greedy decoding by re-running the full forward each step (the reference for the cache).

    The sequence lives in a fixed ``[B, T + max_new_tokens]`` buffer so there is one
    compilation; causal attention makes the unfilled tail invisible to earlier positions.
    """
    b, t = prompt.shape
    ids = jnp.zeros((b, t + max_new_tokens), jnp.int32).at[:, :t].set(prompt)
    for pos in range(t, t + max_new_tokens):
        logits = forward(cfg, params, ids, mesh=mesh)
        ids = ids.at[:, pos].set(jnp.argmax(logits[:, pos - 1], axis=-1).astype(jnp.int32))
    return ids
