"""examples/llama with ``fuse_norms`` in bfloat16 (random weights; also with float32 norm weights) computes the model
without it.

Both models write the same roundings, but XLA's default "excess precision" keeps float32 between some of the
unfused model's ops, so by default the two differ (this random model amplifies a rounding: 5% in the logits).
Compiled with ``xla_allow_excess_precision=False`` they are equal bit for bit. Exactness against ModelOpt's own
logits is tested in float32 on the fixture (test_llama_fixture.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from examples.llama import Llama, LlamaConfig, generate
from examples.llama.model import RMSNorm
from mxfp8_xla import norm

CFG = dict(
    vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, quantized=True, fuse_projections=True, backend="emulation",
)  # fmt: skip
NO_EXCESS_PRECISION = {"xla_allow_excess_precision": False}


def logits(cfg: LlamaConfig, params, ids, compiler_options=None) -> np.ndarray:
    apply = jax.jit(lambda p, i: Llama(cfg).apply({"params": p}, i)[0], compiler_options=compiler_options)
    return np.asarray(apply(params, ids))


def test_fused_norms_in_bf16_equal_the_unfused_model():
    plain, fused = LlamaConfig(**CFG), LlamaConfig(**CFG, fuse_norms=True)
    ids = jax.random.randint(jax.random.key(1), (2, 16), 0, plain.vocab_size)
    params = jax.jit(Llama(plain).init)(jax.random.key(0), ids)["params"]
    np.testing.assert_array_equal(
        logits(fused, params, ids, NO_EXCESS_PRECISION), logits(plain, params, ids, NO_EXCESS_PRECISION)
    )
    want, got = logits(plain, params, ids), logits(fused, params, ids)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.1  # XLA's defaults: measured 5.1e-2
    out = generate(fused, params, ids[:, :8], max_new_tokens=4)
    assert out.shape == (2, 12) and np.array_equal(np.asarray(out[:, :8]), np.asarray(ids[:, :8]))


def test_fused_norms_equal_the_unfused_model_with_float32_norm_weights_on_bf16_activations():
    """Mixed precision (``param_dtype=float32``): the norm's output is float32 in both models (Hugging Face's
    formula, ``mxfp8_xla.norm``'s), so the fused one computes the unfused one. Norm weights away from one, so that a
    rounding of the norm's output to bf16 would show."""
    plain = LlamaConfig(**CFG, param_dtype=jnp.float32)
    fused = LlamaConfig(**CFG, param_dtype=jnp.float32, fuse_norms=True)
    ids = jax.random.randint(jax.random.key(1), (2, 16), 0, plain.vocab_size)
    params = jax.jit(Llama(plain).init)(jax.random.key(0), ids)["params"]
    noise = jax.random.normal(jax.random.key(3), (plain.hidden_size,))
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: v * (1 + 0.1 * noise) if "norm" in jax.tree_util.keystr(path) else v, params
    )
    want = logits(plain, params, ids, NO_EXCESS_PRECISION)
    np.testing.assert_array_equal(logits(fused, params, ids, NO_EXCESS_PRECISION), want)


def test_the_norm_keeps_a_float32_weights_result_dtype_as_transformers_does():
    x = jax.random.normal(jax.random.key(4), (2, 64)).astype(jnp.bfloat16)
    w = 1 + 0.1 * jax.random.normal(jax.random.key(5), (64,))
    y = RMSNorm(1e-5, jnp.float32).apply({"params": {"weight": w}}, x)
    x32 = np.asarray(x, np.float32)
    normed = x32 / np.sqrt(np.mean(x32 * x32, axis=-1, keepdims=True) + 1e-5)
    want = np.asarray(w) * np.asarray(jnp.asarray(normed).astype(jnp.bfloat16), np.float32)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), want, rtol=2**-7)  # rsqrt's last bit may move a bf16 rounding
    assert np.asarray(norm.rms_norm(x, w, 1e-5)).tobytes() == np.asarray(y).tobytes()
