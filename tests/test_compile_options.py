"""DECODE_LOOP_COMPILER_OPTIONS: accepted by jax.jit, the numbers unchanged, and generate() compiled with it."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np

import mxfp8_xla
from mxfp8_xla import DECODE_LOOP_COMPILER_OPTIONS


def _decode_like(cache: jax.Array, rows: jax.Array) -> jax.Array:
    """A scan that writes one row per step at the step's index: the pattern the option is for."""

    def step(c, i):
        return jax.lax.dynamic_update_slice(c, rows[i][None] * 2, (i, 0)), None

    return jax.lax.scan(step, cache, jnp.arange(rows.shape[0]))[0]


def test_option_compiles_and_keeps_the_numbers():
    rows = jnp.arange(24, dtype=jnp.bfloat16).reshape(6, 4)
    cache = jnp.zeros((8, 4), jnp.bfloat16)
    plain = jax.jit(_decode_like)(cache, rows)
    with_option = jax.jit(_decode_like, compiler_options=DECODE_LOOP_COMPILER_OPTIONS)(cache, rows)
    np.testing.assert_array_equal(np.asarray(with_option), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(plain[:6]), np.asarray(rows) * 2)


def test_exported_and_names_the_pass():
    assert mxfp8_xla.DECODE_LOOP_COMPILER_OPTIONS is DECODE_LOOP_COMPILER_OPTIONS
    assert DECODE_LOOP_COMPILER_OPTIONS == {"xla_disable_hlo_passes": "dynamic-slice-copy-fusion-async-wrapper"}


def test_llama_generate_is_compiled_with_it():
    generate_module = importlib.import_module("examples.llama.generate")  # the package re-exports the function

    compiled = generate_module._generate._jit_info.compiler_options_kvs  # private: jax has no public getter
    assert dict(compiled) == DECODE_LOOP_COMPILER_OPTIONS
    assert not generate_module._generate_inside_jit._jit_info.compiler_options_kvs


def test_llama_generate_also_runs_inside_another_jit():
    """JAX refuses compiler options on a nested jit: generate() on tracers takes the version without them."""
    from examples.llama import Llama, LlamaConfig, generate

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, backend="emulation",
    )  # fmt: skip
    prompt = jnp.array([[1, 2, 3, 4]], jnp.int32)
    params = jax.jit(Llama(cfg).init)(jax.random.key(0), prompt)["params"]
    outside = generate(cfg, params, prompt, max_new_tokens=3)
    inside = jax.jit(lambda p, x: generate(cfg, p, x, max_new_tokens=3))(params, prompt)
    np.testing.assert_array_equal(np.asarray(inside), np.asarray(outside))
