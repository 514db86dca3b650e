"""``with_add_rms_norm`` of the Linen and NNX layers: the layer applied to ``rms_norm(x + delta)``, and the sum,
bit for bit, under jit, with the layer's bias and params unchanged; train mode refuses it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxfp8_xla import norm
from mxfp8_xla.flax import MXFP8Dense, MXFP8Linear

EPS = 1e-6
K, N = 256, 96


def operands(rows=(2, 3)):
    kx, kd, kg = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(kx, (*rows, K)).astype(jnp.bfloat16)
    delta = (0.5 * jax.random.normal(kd, (*rows, K))).astype(jnp.bfloat16)
    g = (1 + 0.1 * jax.random.normal(kg, (K,))).astype(jnp.bfloat16)
    return x, delta, g


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("use_bias", [False, True])
def test_linen(use_bias):
    x, delta, g = operands()
    layer = MXFP8Dense(N, use_bias=use_bias, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = layer.init(jax.random.key(0), x)
    if use_bias:
        params = jax.tree.map(lambda p: p + 0.25 if p.dtype == jnp.bfloat16 else p, params)
    fused = jax.jit(lambda p, x, d, g: layer.apply(p, x, d, g, eps=EPS, method=MXFP8Dense.with_add_rms_norm))
    y, h = fused(params, x, delta, g)
    h_want = norm.add(x, delta)
    assert_same(h, h_want)
    assert_same(y, layer.apply(params, norm.rms_norm(h_want, g, EPS)))
    assert y.shape == (2, 3, N) and y.dtype == jnp.bfloat16


def test_linen_params_are_the_layers_own():
    x, delta, g = operands()
    layer = MXFP8Dense(N)
    by_call = layer.init(jax.random.key(0), x)
    by_method = layer.init(jax.random.key(0), x, delta, g, eps=EPS, method=MXFP8Dense.with_add_rms_norm)
    assert jax.tree.structure(by_call) == jax.tree.structure(by_method)
    jax.tree.map(assert_same, by_call, by_method)


def test_linen_in_a_parent_module():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, delta, g):
            return MXFP8Dense(N, name="proj").with_add_rms_norm(x, delta, g, eps=EPS)

    x, delta, g = operands()
    params = Block().init(jax.random.key(0), x, delta, g)
    assert set(params["params"]["proj"]) == {"kernel_q", "kernel_scale", "bias"}
    y, h = Block().apply(params, x, delta, g)
    assert_same(h, norm.add(x, delta))


def test_linen_train_mode_refuses():
    x, delta, g = operands()
    layer = MXFP8Dense(N, mode="train")
    with pytest.raises(ValueError, match=r"MXFP8Dense at .*: with_add_rms_norm needs mode='inference'"):
        layer.init(jax.random.key(0), x, delta, g, eps=EPS, method=MXFP8Dense.with_add_rms_norm)


@pytest.mark.parametrize("use_bias", [False, True])
def test_nnx(use_bias):
    x, delta, g = operands()
    layer = MXFP8Linear(K, N, use_bias=use_bias, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    if use_bias:
        layer.bias[...] = jnp.full((N,), 0.25, layer.bias[...].dtype)
    y, h = nnx.jit(lambda m, x, d, g: m.with_add_rms_norm(x, d, g, eps=EPS))(layer, x, delta, g)
    h_want = norm.add(x, delta)
    assert_same(h, h_want)
    assert_same(y, layer(norm.rms_norm(h_want, g, EPS)))


def test_bad_operands_name_the_layer():
    x, delta, g = operands()
    layer = MXFP8Linear(K, N, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=rf"add_rms_norm_matmul\(MXFP8Linear\({K}, {N}\)\): norm_weight must be"):
        layer.with_add_rms_norm(x, delta, g[:32], eps=EPS)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, delta, g):
            return MXFP8Dense(N, name="proj").with_add_rms_norm(x, delta, g, eps=EPS)

    params = Block().init(jax.random.key(0), x, delta, g)
    with pytest.raises(ValueError, match=r"add_rms_norm_matmul\(MXFP8Dense at 'proj'\): delta must have x's shape"):
        Block().apply(params, x, delta[..., :32], g)


def test_nnx_train_mode_refuses():
    x, delta, g = operands()
    layer = MXFP8Linear(K, N, mode="train", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"MXFP8Linear\(256, 96\): with_add_rms_norm needs mode='inference'"):
        layer.with_add_rms_norm(x, delta, g, eps=EPS)
