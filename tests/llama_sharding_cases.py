"""The tensor-parallel Llama example on 8 CPU devices, run by tests/test_sharding.py in a subprocess.

    python tests/llama_sharding_cases.py FIXTURE_DIR

The ModelOpt tiny Llama (4 heads, 2 KV heads, so the model axis is 2) split over
``("data", "model")`` meshes against the same model on one device, in float32: logits
within float32 accumulation order, greedy ids (KV cache) identical; emulation and torch
backends, biases on the row-parallel layers, the ``nn.Dense`` baseline; the bad
configurations raise the documented errors. Prints one line per case, then OK.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.llama import Llama, LlamaConfig, forward, generate, params_from_hf, shard_params  # noqa: E402
from mxfp8_xla.checkpoint import load_modelopt, load_safetensors  # noqa: E402

TOL = 1e-6  # float32 accumulation order (psum of partial sums, narrower dots); measured up to 2.2e-7


def mesh_of(data: int, model: int) -> Mesh:
    return Mesh(np.array(jax.devices()[: data * model]).reshape(data, model), ("data", "model"))


def compare(label: str, got, want) -> None:
    """Relative Frobenius and max-abs-over-max-magnitude differences, and identical argmax."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    fro = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    peak = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    assert fro < TOL and peak < TOL, (label, fro, peak)
    assert np.array_equal(got.argmax(-1), want.argmax(-1)), label
    print(f"{label}: logits rel diff {fro:.1e} (Frobenius), max |diff| / max |logit| {peak:.1e}")


def expect_error(label: str, want: str, fn) -> None:
    try:
        fn()
    except ValueError as e:
        assert want in str(e), (label, str(e))
        print(f"{label}: {e}")
    else:
        raise AssertionError(f"{label}: no ValueError")


def tiny(**kw) -> LlamaConfig:
    base = dict(vocab_size=64, num_hidden_layers=1, head_dim=32, dtype=jnp.float32, param_dtype=jnp.float32)
    return LlamaConfig(**(base | kw))


def init_shapes(cfg: LlamaConfig):
    return jax.eval_shape(lambda: Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


def main(fixture: Path) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    ref = np.load(fixture / "reference.npz")
    ids = jnp.asarray(ref["input_ids"], jnp.int32)  # [2, 24]
    ckpt = load_modelopt(fixture, dtype=jnp.float32, progress=False)
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    cfg = LlamaConfig.from_hf(ckpt.config, quantized=True, backend="emulation", **kw)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)  # model axis 2; 4 does not divide
    params = params_from_hf(ckpt.tensors, cfg)
    want = forward(cfg, params, ids)

    # All 8 devices: data 4 x model 2 (the batch tiled to 4 rows).
    mesh = mesh_of(4, 2)
    placed = shard_params(cfg, params, mesh)
    attn = placed["layers_0"]["self_attn"]
    assert attn["q_proj"]["kernel_q"].sharding.spec == P("model", None)
    assert attn["q_proj"]["kernel_scale"].sharding.spec == P("model", None)
    assert attn["o_proj"]["kernel_q"].sharding.spec == P(None, "model")
    assert attn["o_proj"]["kernel_scale"].sharding.spec == P(None, "model")
    assert placed["lm_head"]["kernel_nk"].sharding.spec == P()
    local = attn["o_proj"]["kernel_scale"].addressable_shards[0].data.shape
    assert local == (256, 4), local  # K = 256: 8 scale blocks, 4 per device
    got = forward(cfg, placed, jnp.tile(ids, (2, 1)), mesh=mesh)
    compare("emulation, mesh 4x2", got, jnp.tile(want, (2, 1, 1)))

    # Greedy generation with the KV cache split along the KV heads (and the batch): ModelOpt's greedy
    # continuation, which the unsharded generate() reproduces too (tests/test_llama_fixture.py).
    mesh = mesh_of(2, 2)
    placed = shard_params(cfg, params, mesh)
    greedy = ref["greedy_ids"]  # [1, 16]: an 8-token prompt and 8 new tokens
    prompt = jnp.tile(ids[:1, :8], (2, 1))
    tp = np.asarray(generate(cfg, placed, prompt, max_new_tokens=greedy.shape[1] - 8, mesh=mesh))
    np.testing.assert_array_equal(tp, np.tile(greedy, (2, 1)))
    print("emulation, mesh 2x2: greedy ids with the KV cache identical to ModelOpt's / one device's")

    # The torch backend (DLPack bridge, per shard).
    cfg_torch = dataclasses.replace(cfg, backend="torch")
    got = forward(cfg_torch, placed, ids, mesh=mesh)
    compare("torch,     mesh 2x2", got, forward(cfg_torch, params, ids))

    # Biases on every projection: column-parallel ones split along N, row-parallel ones added once after the psum.
    cfg_bias = dataclasses.replace(cfg, attention_bias=True, mlp_bias=True)
    rng = np.random.default_rng(0)
    biased = jax.tree_util.tree_map_with_path(lambda _, x: x, params)  # a copy of the dict tree
    for i in range(cfg.num_hidden_layers):
        for group in biased[f"layers_{i}"]["self_attn"], biased[f"layers_{i}"]["mlp"]:
            for p in group.values():
                p["bias"] = jnp.asarray(rng.standard_normal(p["kernel_q"].shape[0]) * 0.1, jnp.float32)
    want_bias = forward(cfg_bias, biased, ids)
    assert np.linalg.norm(want_bias - want) / np.linalg.norm(want) > 1e-2  # the biases matter
    compare("biases,    mesh 2x2", forward(cfg_bias, shard_params(cfg_bias, biased, mesh), ids, mesh=mesh), want_bias)

    # The nn.Dense baseline: kernel [K, N], the transposed specs.
    cfg_dense = dataclasses.replace(cfg, quantized=False)
    dense = params_from_hf(load_safetensors(fixture / "unquantized_bf16.safetensors", dtype=jnp.float32), cfg_dense)
    placed = shard_params(cfg_dense, dense, mesh)
    assert placed["layers_0"]["self_attn"]["q_proj"]["kernel"].sharding.spec == P(None, "model")
    assert placed["layers_0"]["mlp"]["down_proj"]["kernel"].sharding.spec == P("model", None)
    compare("nn.Dense,  mesh 2x2", forward(cfg_dense, placed, ids, mesh=mesh), forward(cfg_dense, dense, ids))

    # The "nk" bf16 layout: kernel_nk [N, K], split as kernel_q.
    cfg_nk = dataclasses.replace(cfg_dense, bf16_layout="nk")
    nk = params_from_hf(load_safetensors(fixture / "unquantized_bf16.safetensors", dtype=jnp.float32), cfg_nk)
    placed = shard_params(cfg_nk, nk, mesh)
    assert placed["layers_0"]["self_attn"]["q_proj"]["kernel_nk"].sharding.spec == P("model", None)
    assert placed["layers_0"]["mlp"]["down_proj"]["kernel_nk"].sharding.spec == P(None, "model")
    compare("bf16 nk,   mesh 2x2", forward(cfg_nk, placed, ids, mesh=mesh), forward(cfg_nk, nk, ids))

    # Bad configurations fail before any XLA work.
    expect_error(
        "heads over 4",
        "4 attention heads and 2 KV heads cannot be split over the 4 devices of mesh axis 'model'",
        lambda: shard_params(cfg, params, mesh_of(2, 4)),
    )
    expect_error(
        "heads over 4 (forward)",
        "cannot be split over the 4 devices",
        lambda: forward(cfg, params, ids, mesh=mesh_of(2, 4)),
    )
    split_block = tiny(hidden_size=64, intermediate_size=96, num_attention_heads=2, num_key_value_heads=2)
    expect_error(
        "K block split",
        "row-parallel layers_0/mlp/down_proj: weight [N=64, K=96] cannot be split along K over 2 devices: each "
        "device's K range (96/2) must be a whole number of 32-element MXFP8 blocks",
        lambda: shard_params(split_block, init_shapes(split_block), mesh_of(1, 2)),
    )
    odd_n = tiny(hidden_size=96, intermediate_size=64, num_attention_heads=3, num_key_value_heads=3)
    expect_error(
        "N over 3",
        "column-parallel layers_0/mlp/gate_proj: weight [N=64, K=96] cannot be split along N over 3 devices",
        lambda: shard_params(odd_n, init_shapes(odd_n), mesh_of(1, 3)),
    )
    expect_error(
        "batch over 4",
        "batch 2 cannot be split over the 4 devices of mesh axis 'data'",
        lambda: forward(cfg, params, ids, mesh=mesh_of(4, 2)),
    )
    print("OK")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
