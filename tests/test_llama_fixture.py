"""The Flax Llama example (examples/llama) against ModelOpt's own results on the tiny fixture.

Emulation backend, float32. ``reference.npz`` was computed with PyTorch's sdpa attention;
one activation of the fixture sits a few float32 ulps from an fp8 rounding tie, on the other
side of it in PyTorch's sdpa (see examples/llama/run.py and docs/checkpoints.md), so the
logits are compared (a) on every token that does not attend to that element and (b) on
all tokens with that one element given PyTorch's value.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURE_DIR

import mxfp8_xla as mx
from mxfp8_xla.checkpoint import load_safetensors

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.llama import (  # noqa: E402
    Llama,
    LlamaConfig,
    forward,
    generate,
    greedy_without_cache,
    init_cache,
    params_from_hf,
)
from examples.llama.parallel import check  # noqa: E402
from examples.llama.run import (  # noqa: E402
    TIE_FIRST_POSITION,
    TIE_INDEX,
    TIE_SDPA_VALUE,
    _layer_input,
    forward_with_sdpa_tie,
    load_fixture_model,
    rel_fro,
)

pytestmark = pytest.mark.skipif(not FIXTURE_DIR.is_dir(), reason=f"fixture directory {FIXTURE_DIR} is absent")


@pytest.fixture(scope="module")
def fixture_copy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fixture") / FIXTURE_DIR.name
    shutil.copytree(FIXTURE_DIR, out)
    return out


@pytest.fixture(scope="module")
def ref(fixture_copy):
    return dict(np.load(fixture_copy / "reference.npz"))


@pytest.fixture(scope="module")
def model(fixture_copy):
    return load_fixture_model(fixture_copy, backend="emulation")


@pytest.fixture(scope="module")
def unquantized(fixture_copy):
    return load_safetensors(fixture_copy / "unquantized_bf16.safetensors", dtype=jnp.float32)


@pytest.fixture(scope="module")
def logits(model, ref):
    cfg, params, _ = model
    return np.asarray(forward(cfg, params, jnp.asarray(ref["input_ids"], jnp.int32)))


def test_config_from_hf(model):
    cfg = model[0]
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (2, 256, 512)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hd, cfg.vocab_size) == (4, 2, 64, 1000)
    assert cfg.rope_theta == 10000.0 and cfg.rope_scaling is None and not cfg.tie_word_embeddings


def test_logits_match_modelopt_on_tokens_not_after_the_tie(logits, ref):
    want = ref["logits_mxfp8"]
    keep = np.ones(want.shape[:2], bool)
    keep[TIE_INDEX[0], TIE_FIRST_POSITION:] = False
    assert keep.sum() == 33
    assert rel_fro(logits[keep], want[keep]) < 1e-3  # measured 2.6e-7 (jax 0.10.2, CPU)
    assert np.array_equal(logits.argmax(-1), want.argmax(-1))


def test_logits_match_modelopt_with_the_tie_element_as_pytorch_sdpa_computed_it(model, ref, logits):
    cfg, params, _ = model
    ids = jnp.asarray(ref["input_ids"], jnp.int32)
    # the element really is at a tie: ours rounds down, PyTorch sdpa's rounds up, each a few float32 ulps from it
    ours = np.float32(_layer_input(cfg, params, ids)[TIE_INDEX])
    tie = np.float32(-432 / 1024)
    assert ours > tie > TIE_SDPA_VALUE
    ulps_from_tie = lambda v: abs(int(v.view(np.int32)) - int(tie.view(np.int32)))  # noqa: E731
    assert ulps_from_tie(TIE_SDPA_VALUE) == 1 and ulps_from_tie(ours) <= 4  # ours: 2 on jax 0.10.2, 4 on 0.12.0.1
    # ... and it is the only difference: with it, the whole tensor agrees
    got = forward_with_sdpa_tie(cfg, params, ids)
    assert rel_fro(got, ref["logits_mxfp8"]) < 1e-3  # measured 1.5e-7
    # without it, the tokens after the tie differ (documented: 1.2e-2 over the whole tensor)
    assert rel_fro(logits, ref["logits_mxfp8"]) > 1e-3


def test_greedy_ids_exact_with_kv_cache_under_jit(model, ref):
    cfg, params, _ = model
    greedy = ref["greedy_ids"]
    prompt = jnp.asarray(ref["input_ids"][:1, :8], jnp.int32)
    out = generate(cfg, params, prompt, max_new_tokens=greedy.shape[1] - 8)
    np.testing.assert_array_equal(np.asarray(out), greedy)


def test_kv_cache_generation_equals_no_cache_greedy(model, ref):
    cfg, params, _ = model
    prompt = jnp.asarray(ref["input_ids"][:, :12], jnp.int32)  # batch of 2
    cached = generate(cfg, params, prompt, max_new_tokens=6)
    uncached = greedy_without_cache(cfg, params, prompt, 6)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))


def test_prompt_len_pads_the_prompt_buffer(model, ref):
    cfg, params, _ = model
    prompt = jnp.asarray(ref["input_ids"][:1, :8], jnp.int32)
    want = np.asarray(generate(cfg, params, prompt, max_new_tokens=8))
    padded = jnp.asarray(ref["input_ids"][:1, :12], jnp.int32)  # 4 tokens of junk after the prompt
    got = np.asarray(generate(cfg, params, padded, max_new_tokens=8, prompt_len=8))
    np.testing.assert_array_equal(got[:, :16], want)
    assert np.all(got[:, 16:] == 0)


def test_cached_prefill_and_decode_logits_equal_full_forward(model, ref):
    cfg, params, _ = model
    ids = jnp.asarray(ref["input_ids"][1:, :10], jnp.int32)
    full = forward(cfg, params, ids)
    apply = jax.jit(Llama(cfg).apply)
    cache = init_cache(cfg, 1, 16)
    pre, cache = apply({"params": params}, ids[:, :7], cache=cache, cache_index=0)
    steps = [pre]
    for i in range(7, 10):
        step, cache = apply({"params": params}, ids[:, i : i + 1], cache=cache, cache_index=jnp.int32(i))
        steps.append(step)
    assert rel_fro(jnp.concatenate(steps, axis=1), full) < 1e-5


def test_sampling(model, ref):
    cfg, params, _ = model
    prompt = jnp.asarray(ref["input_ids"][:1, :8], jnp.int32)
    greedy = generate(cfg, params, prompt, max_new_tokens=8)
    top1 = generate(cfg, params, prompt, jax.random.key(3), max_new_tokens=8, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))
    a = generate(cfg, params, prompt, jax.random.key(0), max_new_tokens=8, temperature=1.0)
    b = generate(cfg, params, prompt, jax.random.key(0), max_new_tokens=8, temperature=1.0)
    c = generate(cfg, params, prompt, jax.random.key(1), max_new_tokens=8, temperature=1.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < cfg.vocab_size))
    # after eos_id every token is eos_id
    eos = int(greedy[0, 8])
    out = np.asarray(generate(cfg, params, prompt, max_new_tokens=6, eos_id=eos))
    assert np.all(out[0, 8:] == eos)


def test_quantize_of_unquantized_weights_equals_modelopt_bytes(model, unquantized):
    cfg, params, _ = model
    requantized = params_from_hf(unquantized, cfg)  # float weights are quantized on load
    n = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        other = requantized
        for key in path:
            other = other[key.key]
        if leaf.dtype in (jnp.float8_e4m3fn, jnp.uint8):
            np.testing.assert_array_equal(np.asarray(leaf).view(np.uint8), np.asarray(other).view(np.uint8))
            n += 1
    assert n == 28  # kernel_q and kernel_scale of 14 projections


def test_nn_dense_variant_matches_unquantized_reference(model, unquantized, ref):
    cfg = dataclasses.replace(model[0], quantized=False)
    params = params_from_hf(unquantized, cfg)
    assert params["layers_0"]["self_attn"]["k_proj"]["kernel"].shape == (256, 128)  # [K, N] = W.T
    got = forward(cfg, params, jnp.asarray(ref["input_ids"], jnp.int32))
    assert rel_fro(got, ref["logits_unquantized"]) < 1e-5  # measured 6e-7


def test_nk_layout_variant_matches_nn_dense_and_the_reference(model, unquantized, ref):
    kn = dataclasses.replace(model[0], quantized=False)
    nk = dataclasses.replace(kn, bf16_layout="nk")
    params = params_from_hf(unquantized, nk)
    assert params["layers_0"]["self_attn"]["k_proj"]["kernel_nk"].shape == (128, 256)  # [N, K] = W
    ids = jnp.asarray(ref["input_ids"], jnp.int32)
    got = jax.jit(lambda p: forward(nk, p, ids))(params)
    want = forward(kn, params_from_hf(unquantized, kn), ids)
    assert rel_fro(got, want) < 1e-6  # the same function; the dots may add in another order
    assert rel_fro(got, ref["logits_unquantized"]) < 1e-5


def test_an_unknown_bf16_layout_is_named(model):
    cfg = dataclasses.replace(model[0], quantized=False, bf16_layout="kN")
    with pytest.raises(ValueError, match=r"bf16_layout='kN': expected one of \['kn', 'nk'\]"):
        Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize("quantized, layout", [(True, "kn"), (False, "kn"), (False, "nk")])
def test_loaded_params_have_the_init_tree(model, unquantized, quantized, layout):
    cfg = dataclasses.replace(model[0], quantized=quantized, bf16_layout=layout)
    shapes = jax.eval_shape(lambda: Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    loaded = params_from_hf(unquantized, cfg)
    assert jax.tree.structure(shapes) == jax.tree.structure(loaded)
    for s, p in zip(jax.tree.leaves(shapes), jax.tree.leaves(loaded), strict=True):
        assert (s.shape, s.dtype) == (p.shape, p.dtype)
    proj = loaded["layers_1"]["mlp"]["down_proj"]
    if quantized:
        assert proj["kernel_q"].shape == (256, 512) and proj["kernel_scale"].shape == (256, 16)
    elif layout == "nk":
        assert proj["kernel_nk"].shape == (256, 512)
    else:
        assert proj["kernel"].shape == (512, 256)


def test_tied_head_and_mxarray_dequantized_into_nn_dense(model):
    cfg, _, ckpt = model
    tensors = {k: v for k, v in ckpt.tensors.items() if k != "lm_head.weight"}
    tied = dataclasses.replace(cfg, tie_word_embeddings=True, quantized=False)
    params = params_from_hf(tensors, tied)  # MXArray weights are dequantized exactly for nn.Dense
    assert "lm_head" not in params
    w = ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(params["layers_0"]["self_attn"]["q_proj"]["kernel"], mx.dequantize(w).T)
    out = forward(tied, params, jnp.zeros((1, 4), jnp.int32))
    assert out.shape == (1, 4, cfg.vocab_size) and np.all(np.isfinite(out))


def test_llama3_rope_scaling_matches_transformers():
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    transformers = pytest.importorskip("transformers")
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    hf = dict(
        vocab_size=128,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_parameters=rope,
    )
    from examples.llama.model import rope_inv_freq

    cfg = LlamaConfig.from_hf(hf)
    want, _ = rope_utils.ROPE_INIT_FUNCTIONS["llama3"](transformers.LlamaConfig(**hf), "cpu")
    np.testing.assert_allclose(np.asarray(rope_inv_freq(cfg)), want.numpy(), rtol=1e-6)


def _fused(cfg, **kw):
    return dataclasses.replace(cfg, fuse_projections=True, **kw)


def test_fused_projections_hold_the_checkpoints_bytes_side_by_side(model):
    cfg, _, ckpt = model
    params = params_from_hf(ckpt.tensors, _fused(cfg))
    attn, mlp = params["layers_1"]["self_attn"], params["layers_1"]["mlp"]
    assert set(attn) == {"qkv_proj", "o_proj"} and set(mlp) == {"gate_up_proj", "down_proj"}
    for fused, parts, group in (("qkv_proj", "qkv", "self_attn"), ("gate_up_proj", ("gate", "up"), "mlp")):
        got = params["layers_1"][group][fused]
        ws = [ckpt.tensors[f"model.layers.1.{group}.{p}_proj.weight"] for p in parts]
        want_q = np.concatenate([np.asarray(w.data).view(np.uint8) for w in ws])
        np.testing.assert_array_equal(np.asarray(got["kernel_q"]).view(np.uint8), want_q)
        np.testing.assert_array_equal(np.asarray(got["kernel_scale"]), np.concatenate([w.scale for w in ws]))
    assert attn["qkv_proj"]["kernel_q"].shape == ((4 + 2 * 2) * 64, 256)
    assert mlp["gate_up_proj"]["kernel_scale"].shape == (2 * 512, 256 // 32)


def test_fused_projections_compute_the_same_logits(model, unquantized, ref, logits):
    cfg, _, ckpt = model
    ids = jnp.asarray(ref["input_ids"], jnp.int32)
    fused = _fused(cfg)
    got = jax.jit(lambda p: forward(fused, p, ids))(params_from_hf(ckpt.tensors, fused))
    assert rel_fro(got, logits) < 1e-6  # the same products; only XLA's summation order may differ
    for layout in ("kn", "nk"):
        plain = dataclasses.replace(cfg, quantized=False, bf16_layout=layout)
        want = forward(plain, params_from_hf(unquantized, plain), ids)
        fused = _fused(plain)
        assert rel_fro(forward(fused, params_from_hf(unquantized, fused), ids), want) < 1e-6


def test_fused_projections_generate_the_reference_greedy_ids(model, ref):
    cfg, _, ckpt = model
    fused = _fused(cfg)
    greedy = ref["greedy_ids"]
    prompt = jnp.asarray(ref["input_ids"][:1, :8], jnp.int32)
    out = generate(fused, params_from_hf(ckpt.tensors, fused), prompt, max_new_tokens=greedy.shape[1] - 8)
    np.testing.assert_array_equal(np.asarray(out), greedy)


def test_fused_norms_compute_the_same_logits_and_greedy_ids(model, ref, logits):
    cfg, _, ckpt = model
    ids = jnp.asarray(ref["input_ids"], jnp.int32)
    fused = _fused(cfg, fuse_norms=True)
    params = params_from_hf(ckpt.tensors, fused)  # the loader's tree serves both
    got = jax.jit(lambda p: forward(fused, p, ids))(params)
    assert rel_fro(got, logits) < 1e-6  # float32: the same sums and norms; only summation order may differ
    greedy = ref["greedy_ids"]
    out = generate(fused, params, ids[:1, :8], max_new_tokens=greedy.shape[1] - 8)
    np.testing.assert_array_equal(np.asarray(out), greedy)


def test_fused_norms_have_the_init_tree(model):
    plain, fused = _fused(model[0]), _fused(model[0], fuse_norms=True)
    init = lambda c: jax.eval_shape(  # noqa: E731
        lambda: Llama(c).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    )
    assert jax.tree.structure(init(plain)) == jax.tree.structure(init(fused))


@pytest.mark.parametrize("change", [dict(quantized=False), dict(fuse_projections=False)])
def test_fused_norms_need_mxfp8_fused_projections(model, change):
    with pytest.raises(ValueError, match="fuse_norms=True needs quantized=True and fuse_projections=True"):
        dataclasses.replace(_fused(model[0]), fuse_norms=True, **change)


@pytest.mark.parametrize("quantized, layout", [(True, "kn"), (False, "kn"), (False, "nk")])
def test_fused_params_have_the_init_tree(model, unquantized, quantized, layout):
    cfg = _fused(model[0], quantized=quantized, bf16_layout=layout)
    shapes = jax.eval_shape(lambda: Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    loaded = params_from_hf(unquantized, cfg)
    assert jax.tree.structure(shapes) == jax.tree.structure(loaded)
    for s, p in zip(jax.tree.leaves(shapes), jax.tree.leaves(loaded), strict=True):
        assert (s.shape, s.dtype) == (p.shape, p.dtype)


def test_fused_projections_refuse_tensor_parallelism(model):
    cfg = model[0]
    with pytest.raises(ValueError, match="fuse_projections=True cannot run with tensor parallelism"):
        _fused(cfg, tp_axis="model")
    with pytest.raises(ValueError, match="fuse_projections=True is not supported"):
        check(_fused(cfg), params_from_hf(model[2].tensors, _fused(cfg)), tp=2)


@pytest.mark.parametrize("quantized, layout", [(True, "kn"), (False, "kn"), (False, "nk")])
def test_fused_projections_concatenate_the_biases_too(model, unquantized, ref, quantized, layout):
    cfg = dataclasses.replace(model[0], quantized=quantized, bf16_layout=layout, attention_bias=True, mlp_bias=True)
    rng = np.random.default_rng(1)
    tensors = dict(unquantized)
    for name, w in unquantized.items():
        if name.endswith("_proj.weight"):
            tensors[name.removesuffix("weight") + "bias"] = jnp.asarray(rng.standard_normal(w.shape[0]), jnp.float32)
    ids = jnp.asarray(ref["input_ids"], jnp.int32)
    want = forward(cfg, params_from_hf(tensors, cfg), ids)
    fused = _fused(cfg)
    assert params_from_hf(tensors, fused)["layers_0"]["self_attn"]["qkv_proj"]["bias"].shape == ((4 + 2 * 2) * 64,)
    assert rel_fro(forward(fused, params_from_hf(tensors, fused), ids), want) < 1e-6
