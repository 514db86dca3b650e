"""DECODE_LOOP_COMPILER_OPTIONS: accepted by jax.jit, the numbers unchanged, and generate() compiled with it."""

from __future__ import annotations

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
    from examples.llama import generate

    assert dict(generate._jit_info.compiler_options_kvs) == DECODE_LOOP_COMPILER_OPTIONS  # private: no public getter
