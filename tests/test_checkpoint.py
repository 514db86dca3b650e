"""ModelOpt MXFP8 checkpoints: load the real export, every error case, save round trips, inspect."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURE_DIR, subprocess_env

import mxfp8_xla as mx
from mxfp8_xla.__main__ import main as cli_main
from mxfp8_xla.checkpoint import (
    CheckpointError,
    ModelOptCheckpoint,
    QuantConfig,
    load_modelopt,
    load_safetensors,
    quantize_state_dict,
    read_quant_config,
    save_modelopt,
    scan_modelopt,
)
from mxfp8_xla.checkpoint._safetensors import SafetensorsFile, write_file

pytestmark = pytest.mark.skipif(not FIXTURE_DIR.is_dir(), reason=f"fixture directory {FIXTURE_DIR} is absent")

Q = "model.layers.0.self_attn.q_proj"
N_QUANTIZED = 14


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    """A writable copy of the ModelOpt export (the shared fixture stays untouched)."""
    out = tmp_path / "ckpt"
    out.mkdir()
    for name in ("config.json", "hf_quant_config.json", "model.safetensors"):
        shutil.copy(FIXTURE_DIR / name, out / name)
        (out / name).chmod(0o644)
    return out


def _raw(path: Path) -> dict[str, np.ndarray]:
    f = SafetensorsFile(path)
    return {n: np.array(f.get(n)) for n in sorted(f.tensors, key=lambda n: f.tensors[n].begin)}


def _rewrite(path: Path, edit) -> None:
    tensors = _raw(path)
    edit(tensors)
    write_file(path, tensors.items(), {"format": "pt"})


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _bytes(x) -> np.ndarray:
    a = np.asarray(x)
    return a.reshape(-1).view(np.uint8) if a.size else np.zeros(0, np.uint8)


def _assert_same(a: ModelOptCheckpoint, b: ModelOptCheckpoint) -> None:
    assert list(a.tensors) == list(b.tensors)
    for name, x in a.tensors.items():
        y = b.tensors[name]
        assert type(x) is type(y), name
        if isinstance(x, mx.MXArray):
            assert x.data.dtype == y.data.dtype == jnp.float8_e4m3fn
            assert x.scale.dtype == y.scale.dtype == jnp.uint8
            np.testing.assert_array_equal(_bytes(x.data), _bytes(y.data), err_msg=name)
            np.testing.assert_array_equal(_bytes(x.scale), _bytes(y.scale), err_msg=name)
        else:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(_bytes(x), _bytes(y), err_msg=name)


# --- loading the real export ---------------------------------------------------------------


def test_load_fixture(ckpt_dir: Path):
    ckpt = load_modelopt(ckpt_dir)
    assert len(ckpt.quantized) == N_QUANTIZED and len(ckpt.tensors) == 21
    w = ckpt.tensors[Q + ".weight"]
    assert isinstance(w, mx.MXArray)
    assert w.data.shape == (256, 256) and w.data.dtype == jnp.float8_e4m3fn
    assert w.scale.shape == (256, 8) and w.scale.dtype == jnp.uint8
    assert ckpt.tensors["model.layers.0.mlp.down_proj.weight"].scale.shape == (256, 16)
    assert Q + ".weight_scale" not in ckpt.tensors  # folded into the MXArray
    assert ckpt.tensors["lm_head.weight"].dtype == jnp.bfloat16
    assert ckpt.tensors["model.norm.weight"].shape == (256,)
    qc = ckpt.quant_config
    assert (qc.quant_algo, qc.group_size, qc.kv_cache_quant_algo) == ("MXFP8", 32, None)
    assert qc.exclude_modules == ("lm_head", "model.embed_tokens")
    assert qc.producer == {"name": "modelopt", "version": "0.47.0"}
    assert ckpt.config["num_hidden_layers"] == 2
    assert ckpt.files[Q + ".weight"] == ckpt_dir / "model.safetensors"


def test_loaded_bytes_match_safetensors_reference_reader(ckpt_dir: Path):
    """Our memory-mapped reader agrees byte for byte with safetensors' own (torch) reader."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    ref = load_file(str(ckpt_dir / "model.safetensors"))
    ckpt = load_modelopt(ckpt_dir, dtype=None)
    for name, value in ckpt.tensors.items():
        if isinstance(value, mx.MXArray):
            pairs = [(value.data, ref[name]), (value.scale, ref[name + "_scale"])]
        else:
            pairs = [(value, ref[name])]
        for ours, theirs in pairs:
            assert tuple(ours.shape) == tuple(theirs.shape)
            np.testing.assert_array_equal(_bytes(ours), theirs.contiguous().view(torch.uint8).numpy().reshape(-1))


def test_load_dtype(ckpt_dir: Path):
    f32 = load_modelopt(ckpt_dir, dtype=jnp.float32)
    kept = load_modelopt(ckpt_dir, dtype=None)
    assert f32.tensors["lm_head.weight"].dtype == jnp.float32
    assert kept.tensors["lm_head.weight"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(f32.tensors["lm_head.weight"], kept.tensors["lm_head.weight"].astype(jnp.float32))
    assert f32.tensors[Q + ".weight"].data.dtype == jnp.float8_e4m3fn  # quantized bytes untouched


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_, jnp.float8_e4m3fn, "float8_e5m2"])
def test_load_refuses_a_dtype_that_would_change_the_values(ckpt_dir: Path, dtype):
    """Casting the embeddings and norms to an integer or float8 dtype would change them silently."""
    name = jnp.dtype(dtype).name
    message = rf"^load_modelopt: dtype is {name}; expected a float dtype of 16 bits or more"
    with pytest.raises(TypeError, match=message):
        load_modelopt(ckpt_dir, dtype=dtype)
    with pytest.raises(TypeError, match=message.replace("load_modelopt", "load_safetensors")):
        load_safetensors(ckpt_dir / "model.safetensors", dtype=dtype)


def test_load_safetensors_dtype_casts_the_unquantized_floats_only(ckpt_dir: Path):
    tensors = load_safetensors(ckpt_dir / "model.safetensors", dtype=jnp.float16)
    assert tensors["lm_head.weight"].dtype == jnp.float16
    assert tensors[Q + ".weight"].dtype == jnp.float8_e4m3fn and tensors[Q + ".weight_scale"].dtype == jnp.uint8


@pytest.mark.parametrize("keep", ["config.json", "hf_quant_config.json"])
def test_either_config_file_suffices(ckpt_dir: Path, keep: str):
    if keep == "config.json":
        (ckpt_dir / "hf_quant_config.json").unlink()
    else:
        _edit_json(ckpt_dir / "config.json", lambda c: c.pop("quantization_config"))
    ckpt = load_modelopt(ckpt_dir)
    assert ckpt.quant_config.exclude_modules == ("lm_head", "model.embed_tokens")
    assert len(ckpt.quantized) == N_QUANTIZED


def test_sharded_checkpoint_with_split_weight_and_scale(ckpt_dir: Path):
    """Shards from an index; a weight and its scale may live in different shards."""
    tensors = _raw(ckpt_dir / "model.safetensors")
    names = list(tensors)
    first = [n for n in names if not n.endswith("_scale")]
    second = [n for n in names if n.endswith("_scale")]
    write_file(ckpt_dir / "model-00001-of-00002.safetensors", [(n, tensors[n]) for n in first])
    write_file(ckpt_dir / "model-00002-of-00002.safetensors", [(n, tensors[n]) for n in second])
    weight_map = {n: "model-00001-of-00002.safetensors" for n in first}
    weight_map |= {n: "model-00002-of-00002.safetensors" for n in second}
    (ckpt_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    single = load_modelopt(FIXTURE_DIR)
    (ckpt_dir / "model.safetensors").unlink()
    sharded = load_modelopt(ckpt_dir)
    assert len(sharded.quantized) == N_QUANTIZED
    assert {p.name for p in sharded.files.values()} == {"model-00001-of-00002.safetensors"}
    _assert_same(
        ModelOptCheckpoint(single.config, single.quant_config, dict(sorted(single.tensors.items()))),
        ModelOptCheckpoint(sharded.config, sharded.quant_config, dict(sorted(sharded.tensors.items()))),
    )


def test_progress_bar(ckpt_dir: Path, capsys):
    pytest.importorskip("tqdm")
    load_modelopt(ckpt_dir, progress=True)
    assert "loading ckpt" in capsys.readouterr().err


# --- clear errors, each naming the tensor and the file ---------------------------------------


def _expect(ckpt_dir: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_modelopt(ckpt_dir)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, msg
    # inspect reports the same problem without reading data
    with pytest.raises(CheckpointError):
        scan_modelopt(ckpt_dir)
    return msg


def test_error_weight_without_scale(ckpt_dir: Path):
    _rewrite(ckpt_dir / "model.safetensors", lambda t: t.pop(Q + ".weight_scale"))
    _expect(ckpt_dir, Q + ".weight", "model.safetensors", "without its scale", Q + ".weight_scale")


def test_error_scale_without_weight(ckpt_dir: Path):
    _rewrite(ckpt_dir / "model.safetensors", lambda t: t.pop(Q + ".weight"))
    _expect(ckpt_dir, Q + ".weight_scale", "model.safetensors", "missing")


def test_error_scale_shape(ckpt_dir: Path):
    def edit(t):
        t[Q + ".weight_scale"] = np.zeros((256, 16), np.uint8)  # K/16: a group size of 16

    _rewrite(ckpt_dir / "model.safetensors", edit)
    _expect(ckpt_dir, Q + ".weight_scale", "model.safetensors", "[256, 16]", "[256, 8]")


def test_error_transposed_scale(ckpt_dir: Path):
    def edit(t):
        t[Q + ".weight_scale"] = np.zeros((8, 256), np.uint8)

    _rewrite(ckpt_dir / "model.safetensors", edit)
    _expect(ckpt_dir, Q + ".weight_scale", "[8, 256]", "[256, 8]")


def test_error_scale_dtype(ckpt_dir: Path):
    def edit(t):
        t[Q + ".weight_scale"] = t[Q + ".weight_scale"].astype(np.float32)

    _rewrite(ckpt_dir / "model.safetensors", edit)
    _expect(ckpt_dir, Q + ".weight_scale", "model.safetensors", "F32", "U8")


def test_error_weight_dtype(ckpt_dir: Path):
    def edit(t):
        t[Q + ".weight"] = t[Q + ".weight"].astype(ml_dtypes.bfloat16)

    _rewrite(ckpt_dir / "model.safetensors", edit)
    _expect(ckpt_dir, Q + ".weight", "model.safetensors", "BF16", "F8_E4M3")


def test_error_other_float8_dtype(ckpt_dir: Path):
    def edit(t):
        t[Q + ".weight"] = t[Q + ".weight"].astype(ml_dtypes.float8_e5m2)

    _rewrite(ckpt_dir / "model.safetensors", edit)
    _expect(ckpt_dir, Q + ".weight", "F8_E5M2")


def test_error_foreign_format_tensor(ckpt_dir: Path):
    def edit(t):
        t[Q + ".weight_scale_2"] = np.ones((), np.float32)

    _rewrite(ckpt_dir / "model.safetensors", edit)
    _expect(ckpt_dir, Q + ".weight_scale_2", "model.safetensors", "NVFP4")


def test_error_excluded_module_stored_quantized(ckpt_dir: Path):
    _edit_json(ckpt_dir / "hf_quant_config.json", lambda c: c["quantization"]["exclude_modules"].append("*q_proj"))
    _expect(ckpt_dir, Q + ".weight", "model.safetensors", "*q_proj", "hf_quant_config.json")


@pytest.mark.parametrize("algo", ["FP8", "NVFP4", "MXFP4"])
@pytest.mark.parametrize("where", ["config.json", "hf_quant_config.json"])
def test_error_quant_algo(ckpt_dir: Path, algo: str, where: str):
    if where == "config.json":
        _edit_json(ckpt_dir / where, lambda c: c["quantization_config"].update(quant_algo=algo))
    else:
        _edit_json(ckpt_dir / where, lambda c: c["quantization"].update(quant_algo=algo))
    _expect(ckpt_dir, where, repr(algo), "only MXFP8")


def test_error_quant_method(ckpt_dir: Path):
    _edit_json(ckpt_dir / "config.json", lambda c: c["quantization_config"].update(quant_method="fp8"))
    _expect(ckpt_dir, "config.json", "'fp8'", "modelopt")


@pytest.mark.parametrize("size", [16, 64])
def test_error_group_size(ckpt_dir: Path, size: int):
    _edit_json(ckpt_dir / "hf_quant_config.json", lambda c: c["quantization"].update(group_size=size))
    _expect(ckpt_dir, "hf_quant_config.json", "group_size", str(size), "32")


def test_error_no_quant_config(ckpt_dir: Path):
    (ckpt_dir / "hf_quant_config.json").unlink()
    _edit_json(ckpt_dir / "config.json", lambda c: c.pop("quantization_config"))
    _expect(ckpt_dir, "not a ModelOpt quantized checkpoint")


def test_error_no_weights(ckpt_dir: Path):
    (ckpt_dir / "model.safetensors").unlink()
    _expect(ckpt_dir, "model.safetensors", "model.safetensors.index.json")


def test_error_truncated_file(ckpt_dir: Path):
    f = ckpt_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-1000])
    # the last tensor in the file is the last scale
    last = max(SafetensorsFile(FIXTURE_DIR / "model.safetensors").tensors.values(), key=lambda t: t.end).name
    _expect(ckpt_dir, "truncated", last, "model.safetensors")


def test_error_truncated_header(ckpt_dir: Path):
    f = ckpt_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    _expect(ckpt_dir, "truncated or corrupt", "model.safetensors")


def test_error_tiny_file(ckpt_dir: Path):
    (ckpt_dir / "model.safetensors").write_bytes(b"\x01\x02")
    _expect(ckpt_dir, "truncated or corrupt", "model.safetensors")


def test_error_corrupt_header(ckpt_dir: Path):
    f = ckpt_dir / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\xff" * 12
    f.write_bytes(bytes(data))
    _expect(ckpt_dir, "corrupt", "not valid JSON", "model.safetensors")


def test_error_offsets_do_not_match_shape(ckpt_dir: Path):
    f = ckpt_dir / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header[Q + ".weight"]["shape"] = [256, 128]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    _expect(ckpt_dir, Q + ".weight", "model.safetensors", "data_offsets")


def test_error_index_missing_shard(ckpt_dir: Path):
    names = list(SafetensorsFile(ckpt_dir / "model.safetensors").tensors)
    weight_map = {n: "model.safetensors" for n in names} | {Q + ".weight": "model-00002-of-00002.safetensors"}
    (ckpt_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _expect(ckpt_dir, "model-00002-of-00002.safetensors", Q + ".weight", "does not exist")


def test_error_index_lists_absent_tensor(ckpt_dir: Path):
    names = list(SafetensorsFile(ckpt_dir / "model.safetensors").tensors)
    weight_map = {n: "model.safetensors" for n in names} | {"model.extra.weight": "model.safetensors"}
    (ckpt_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _expect(ckpt_dir, "model.extra.weight", "model.safetensors", "does not contain it")


def test_error_missing_directory(tmp_path: Path):
    for fn in (load_modelopt, scan_modelopt, read_quant_config):
        with pytest.raises(CheckpointError, match=rf"^checkpoint directory {_q(tmp_path / 'nope')} does not exist$"):
            fn(tmp_path / "nope")


def test_error_file_instead_of_directory(ckpt_dir: Path, capsys):
    """A checkpoint's file is named as a file that exists, with the directory to pass instead."""
    f = ckpt_dir / "model.safetensors"
    pattern = (
        rf"^{_q(f)} is a file, not a checkpoint directory; pass the checkpoint directory, the one that holds "
        rf"config\.json or hf_quant_config\.json and the safetensors files \(perhaps its parent, {_q(ckpt_dir)}\)$"
    )
    for fn in (load_modelopt, scan_modelopt, read_quant_config):
        with pytest.raises(CheckpointError, match=pattern):
            fn(f)
    assert cli_main(["inspect", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {str(f)!r} is a file, not a checkpoint directory;") and "does not exist" not in err


# --- saving ------------------------------------------------------------------------------


def test_load_save_load_bit_exact(ckpt_dir: Path, tmp_path: Path):
    first = load_modelopt(ckpt_dir)
    written = save_modelopt(tmp_path / "out", first)
    assert [p.name for p in written] == ["model.safetensors"]
    second = load_modelopt(tmp_path / "out")
    _assert_same(first, second)
    assert second.quant_config.exclude_modules == first.quant_config.exclude_modules
    assert second.quant_config.producer["name"] == "mxfp8_xla"
    assert {k: v for k, v in second.config.items() if k != "quantization_config"} == {
        k: v for k, v in first.config.items() if k != "quantization_config"
    }
    # the saved file holds exactly the original bytes for every tensor
    orig, saved = _raw(ckpt_dir / "model.safetensors"), _raw(tmp_path / "out" / "model.safetensors")
    assert sorted(orig) == sorted(saved)
    for name in orig:
        assert orig[name].dtype == saved[name].dtype, name
        np.testing.assert_array_equal(_bytes(orig[name]), _bytes(saved[name]), err_msg=name)


def test_saved_file_reads_with_safetensors_library(ckpt_dir: Path, tmp_path: Path):
    torch = pytest.importorskip("torch")
    from safetensors import safe_open

    save_modelopt(tmp_path / "out", load_modelopt(ckpt_dir))
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        w = f.get_tensor(Q + ".weight")
        assert w.dtype == torch.float8_e4m3fn and f.get_tensor(Q + ".weight_scale").dtype == torch.uint8
        names = set(f.keys())
    assert names == set(SafetensorsFile(FIXTURE_DIR / "model.safetensors").tensors)


def test_save_sharded_round_trip(ckpt_dir: Path, tmp_path: Path):
    first = load_modelopt(ckpt_dir, dtype=jnp.float32)
    written = save_modelopt(tmp_path / "out", first, max_shard_bytes=600_000)
    assert len(written) > 2 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    assert all(wm[n] == wm[n + "_scale"] for n in first.quantized)  # weight and scale together
    second = load_modelopt(tmp_path / "out", dtype=None)
    _assert_same(first, second)  # float32 stays float32
    # saving again as one file removes the stale shards and index
    save_modelopt(tmp_path / "out", second)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "hf_quant_config.json",
        "model.safetensors",
    ]
    _assert_same(second, load_modelopt(tmp_path / "out", dtype=None))


class _FailingTensor:
    """A float32 tensor whose bytes cannot be read: a save that reaches it fails part way."""

    shape, dtype = (4, 4), np.dtype(np.float32)

    def __array__(self, dtype=None, copy=None):
        raise OSError("disk full (simulated)")


@pytest.mark.parametrize("max_shard_bytes", [600_000, 1 << 40])
def test_a_failed_save_leaves_the_previous_checkpoint_as_it_was(ckpt_dir: Path, tmp_path: Path, max_shard_bytes):
    first = load_modelopt(ckpt_dir, dtype=None)
    save_modelopt(tmp_path / "out", first, max_shard_bytes=600_000)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    # The failing tensor comes last, so the other tensors (sharded: whole shards) are written before it fails.
    tensors = {**first.tensors, "zz.failing": _FailingTensor()}
    with pytest.raises(OSError, match="disk full"):
        save_modelopt(tmp_path / "out", tensors, config=first.config, max_shard_bytes=max_shard_bytes)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # nothing left behind either
    _assert_same(first, load_modelopt(tmp_path / "out", dtype=None))


def test_save_over_loaded_directory(ckpt_dir: Path):
    """The loaded arrays survive overwriting the (memory-mapped) files they came from."""
    first = load_modelopt(ckpt_dir)
    save_modelopt(ckpt_dir, first)
    _assert_same(first, load_modelopt(ckpt_dir))


def test_quantize_state_dict_then_save_matches_modelopt_file(tmp_path: Path):
    """From bf16 weights to a ModelOpt MXFP8 directory with the same tensor bytes as ModelOpt's."""
    unquantized = _raw(FIXTURE_DIR / "unquantized_bf16.safetensors")
    tensors = quantize_state_dict(unquantized)
    assert sum(isinstance(v, mx.MXArray) for v in tensors.values()) == N_QUANTIZED
    config = json.loads((FIXTURE_DIR / "config.json").read_text())
    save_modelopt(tmp_path / "out", tensors, config=config)
    ours, theirs = _raw(tmp_path / "out" / "model.safetensors"), _raw(FIXTURE_DIR / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype, name
        np.testing.assert_array_equal(_bytes(ours[name]), _bytes(theirs[name]), err_msg=name)
    qc = load_modelopt(tmp_path / "out").quant_config
    assert set(qc.exclude_modules) == {"lm_head", "model.embed_tokens"}


def test_quantize_state_dict_takes_one_pattern_as_a_string():
    """A lone string is one ModelOpt pattern, not one pattern per character (which would match nothing)."""
    w = np.ones((64, 64), np.float32)
    out = quantize_state_dict({"lm_head.weight": w, "model.q_proj.weight": w}, exclude_modules="lm_head")
    assert out["lm_head.weight"] is w and isinstance(out["model.q_proj.weight"], mx.MXArray)
    assert QuantConfig(exclude_modules="lm_head").exclude_modules == ("lm_head",)
    assert QuantConfig(exclude_modules=["a*", "b"]).exclude_modules == ("a*", "b")
    with pytest.raises(TypeError, match=r"^QuantConfig: exclude_modules must be strings \(module patterns\), got 3$"):
        QuantConfig(exclude_modules=["a", 3])


@pytest.mark.parametrize(
    "dtype, hint",
    [
        (
            ml_dtypes.float8_e4m3fn,
            "it looks quantized already; load a quantized checkpoint with load_modelopt, or give "
            "it as MXArray(data, scale) with its 'm.proj.weight_scale'",
        ),
        (ml_dtypes.float8_e5m2, "it looks quantized already"),
        (np.float64, "cast it to one of them first"),
    ],
)
def test_quantize_state_dict_error_for_a_weight_it_cannot_quantize(dtype, hint: str):
    w = np.ones((8, 64)).astype(dtype)  # float64 too: quantize refuses it, and float32 first could round twice
    name = np.dtype(dtype).name
    with pytest.raises(CheckpointError) as e:
        quantize_state_dict({"m.proj.weight": w})
    assert str(e.value).startswith(
        f"quantize_state_dict: tensor 'm.proj.weight' ({name}, shape [8, 64]) is not float32, bfloat16 or float16"
    )
    assert hint in str(e.value)


def test_quantize_state_dict_skips_unblockable_k(caplog):
    w = np.ones((64, 48), np.float32)
    out = quantize_state_dict({"m.proj.weight": w})
    assert out["m.proj.weight"] is w
    assert "not a multiple of 32" in caplog.text


def test_save_errors(tmp_path: Path):
    q = mx.quantize(jnp.ones((32, 64), jnp.float32))
    with pytest.raises(CheckpointError, match="must be named '<module>.weight'"):
        save_modelopt(tmp_path / "a", {"m.kernel": q})
    with pytest.raises(CheckpointError, match="excluded by pattern 'lm_head'"):
        save_modelopt(tmp_path / "b", {"lm_head.weight": q}, quant_config=QuantConfig())
    with pytest.raises(CheckpointError, match="MXFP8"):
        save_modelopt(tmp_path / "c", {"m.weight": q}, quant_config=QuantConfig(quant_algo="NVFP4"))
    with pytest.raises(CheckpointError, match="given as well"):
        save_modelopt(tmp_path / "d", {"m.weight": q, "m.weight_scale": q.scale})
    (tmp_path / "e").write_text("not a directory")
    with pytest.raises(CheckpointError, match=r"it exists and is not a directory \(save_modelopt writes a checkpoint"):
        save_modelopt(tmp_path / "e", {"m.weight": q})
    assert (tmp_path / "e").read_text() == "not a directory"


# --- inspect ------------------------------------------------------------------------------


def test_inspect_cli(ckpt_dir: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "mxfp8_xla", "inspect", str(ckpt_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "quant_algo MXFP8, group_size 32" in out
    assert "producer modelopt 0.47.0" in out
    assert "Quantized linears (MXFP8: float8_e4m3fn weight + uint8 E8M0 scale per 32): 14" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("model.layers.0.mlp.down_proj "))
    assert line.split()[1:] == ["256", "x", "512", "256", "x", "16", "135,168", "model.safetensors"]
    assert "Excluded modules (patterns): lm_head, model.embed_tokens" in out
    assert "lm_head: lm_head.weight" in out
    assert "Total: 35 stored tensors, 2,243,072 bytes" in out


def test_inspect_cli_into_a_pipe_closed_early(ckpt_dir: Path):
    """``inspect DIR | head``: a reader that stops early ends the command quietly (no BrokenPipeError traceback),
    with the status of a process that SIGPIPE ended, as ``yes | head`` reports it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mxfp8_xla", "inspect", str(ckpt_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    proc.stdout.close()  # before the command writes anything: its first write finds the pipe closed
    try:
        err = proc.stderr.read().decode()
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.stderr.close()
    assert err == ""
    assert status == 141


def test_inspect_error(ckpt_dir: Path, capsys):
    _rewrite(ckpt_dir / "model.safetensors", lambda t: t.pop(Q + ".weight_scale"))
    assert cli_main(["inspect", str(ckpt_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and Q + ".weight" in err


def test_64_bit_tensors_load_as_32_bit_only_where_no_value_changes(ckpt_dir: Path, tmp_path: Path):
    """With x64 off JAX keeps 64-bit tensors as 32-bit ones; a tensor whose values would change is refused."""
    fits = {"pos": np.arange(4, dtype=np.int64), "freq": np.array([0.5, 1e30], np.float64)}
    plain = tmp_path / "plain.safetensors"
    for bad in (np.array([2**40 + 5], np.int64), np.array([1e300], np.float64)):
        write_file(plain, [*fits.items(), ("bad", bad)])
        with pytest.raises(
            CheckpointError, match=rf"tensor 'bad' in .*plain.safetensors' \({bad.dtype}, shape \(1,\)\)"
        ):
            load_safetensors(plain)
        _rewrite(ckpt_dir / "model.safetensors", lambda t, bad=bad: t.update({"model.bad": bad}))
        with pytest.raises(CheckpointError, match=r"tensor 'model.bad' .*jax_enable_x64"):
            load_modelopt(ckpt_dir, dtype=None)
    write_file(plain, fits.items())
    got = load_safetensors(plain)
    assert got["pos"].dtype == jnp.int32 and got["freq"].dtype == jnp.float32
    np.testing.assert_array_equal(got["pos"], fits["pos"])


# --- the remaining error paths: each message names the tensor or file and what was expected ----------------------


def _q(path: Path) -> str:
    """The regex for ``path`` as the messages quote it (``repr(str(path))``)."""
    return re.escape(repr(str(path)))


def _expect_match(ckpt_dir: Path, pattern: str) -> None:
    """``load_modelopt`` and ``scan_modelopt`` (headers only) both raise a CheckpointError matching ``pattern``."""
    for fn in (load_modelopt, scan_modelopt):
        with pytest.raises(CheckpointError, match=pattern):
            fn(ckpt_dir)


def _edit_header(path: Path, edit) -> None:
    """Rewrite the JSON header of a safetensors file in place (``edit`` returns the new header); data unchanged."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    raw = json.dumps(edit(json.loads(data[8 : 8 + n]))).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _entry(name: str, **fields):
    """A header edit that updates (or, for a value of ``...``, removes) fields of the entry of tensor ``name``."""

    def edit(header):
        for key, value in fields.items():
            if value is ...:
                header[name].pop(key)
            else:
                header[name][key] = value
        return header

    return edit


def test_error_tensor_stored_twice(ckpt_dir: Path):
    tensors = _raw(ckpt_dir / "model.safetensors")
    first, second = ckpt_dir / "model-00001-of-00002.safetensors", ckpt_dir / "model-00002-of-00002.safetensors"
    write_file(first, tensors.items())
    write_file(second, [(Q + ".weight_scale", tensors[Q + ".weight_scale"])])
    weight_map = {n: first.name for n in tensors} | {Q + ".weight_scale": second.name}
    (ckpt_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (ckpt_dir / "model.safetensors").unlink()
    _expect_match(
        ckpt_dir, rf"^tensor {re.escape(repr(Q + '.weight_scale'))} is stored twice: in {_q(first)} and {_q(second)}$"
    )


def test_error_scaled_tensor_not_a_weight(ckpt_dir: Path):
    """A tensor that is not float8 but has a scale is named for its scale, not called float8."""
    name = "model.layers.0.self_attn.rotary.freqs"
    _rewrite(
        ckpt_dir / "model.safetensors",
        lambda t: t.update({name: np.zeros((4, 32), ml_dtypes.bfloat16), name + "_scale": np.zeros((4, 1), np.uint8)}),
    )
    _expect_match(
        ckpt_dir,
        rf"^tensor {re.escape(repr(name))} in {_q(ckpt_dir / 'model.safetensors')} has a scale tensor "
        rf"{re.escape(repr(name + '_scale'))} but is not a '\.weight'; MXFP8 checkpoints quantize only linear weights$",
    )


@pytest.mark.parametrize("with_scale", [False, True])
def test_error_float8_tensor_not_a_weight(ckpt_dir: Path, with_scale: bool):
    name = "model.layers.0.self_attn.rotary.freqs"

    def edit(t):
        t[name] = np.zeros((4, 32), ml_dtypes.float8_e4m3fn)
        if with_scale:
            t[name + "_scale"] = np.zeros((4, 1), np.uint8)

    _rewrite(ckpt_dir / "model.safetensors", edit)
    _expect_match(
        ckpt_dir,
        rf"^tensor {re.escape(repr(name))} in {_q(ckpt_dir / 'model.safetensors')} is float8_e4m3fn but is not a "
        r"'\.weight'; MXFP8 checkpoints quantize only linear weights$",
    )


@pytest.mark.parametrize(
    ("reshape", "shape"),
    [
        (lambda w: w.reshape(-1), [65536]),  # 1-D: not [N, K]
        (lambda w: w[:, :48], [256, 48]),  # K = 48 is not a multiple of 32
        (lambda w: w[:, :16], [256, 16]),  # K = 16 is shorter than one block
    ],
    ids=["1-D", "K=48", "K=16"],
)
def test_error_quantized_weight_shape(ckpt_dir: Path, reshape, shape: list[int]):
    _rewrite(
        ckpt_dir / "model.safetensors",
        lambda t: t.update({Q + ".weight": np.ascontiguousarray(reshape(t[Q + ".weight"]))}),
    )
    _expect_match(
        ckpt_dir,
        rf"^tensor {re.escape(repr(Q + '.weight'))} in {_q(ckpt_dir / 'model.safetensors')} has shape "
        rf"{re.escape(str(shape))}; an MXFP8 weight must be \[N, K\] with K a multiple of 32$",
    )


@pytest.mark.parametrize(
    "index",
    [{"metadata": {}}, {"weight_map": {}}, {"weight_map": ["model.safetensors"]}, ["model.safetensors"]],
    ids=["absent", "empty", "a list", "not an object"],
)
def test_error_index_without_weight_map(ckpt_dir: Path, index):
    f = ckpt_dir / "model.safetensors.index.json"
    f.write_text(json.dumps(index))
    _expect_match(ckpt_dir, rf"^{_q(f)} has no 'weight_map'$")


PRODUCER = {"name": "modelopt", "version": "0.47.0"}


@pytest.mark.parametrize(
    "content",
    [{"producer": PRODUCER}, {"producer": PRODUCER, "quantization": "MXFP8"}, {"quantization": None}, [PRODUCER]],
    ids=["absent", "a string", "null", "file not an object"],
)
def test_error_hf_quant_config_without_quantization(ckpt_dir: Path, content):
    f = ckpt_dir / "hf_quant_config.json"
    f.write_text(json.dumps(content))
    _expect_match(ckpt_dir, rf"^{_q(f)} has no 'quantization' object$")


@pytest.mark.parametrize("content", ["[]", '"MXFP8"', "null", "7"])
def test_error_config_not_an_object(ckpt_dir: Path, content: str):
    f = ckpt_dir / "config.json"
    f.write_text(content)
    _expect_match(ckpt_dir, rf"^{_q(f)} is not a JSON object$")


@pytest.mark.parametrize("value", ["modelopt", ["MXFP8"], 1])
def test_error_quantization_config_not_an_object(ckpt_dir: Path, value):
    f = ckpt_dir / "config.json"
    _edit_json(f, lambda c: c.update(quantization_config=value))
    _expect_match(ckpt_dir, rf"^{_q(f)}: quantization_config is not an object$")


@pytest.mark.parametrize(
    "name, field, key",
    [("config.json", "quantization_config", "ignore"), ("hf_quant_config.json", "quantization", "exclude_modules")],
)
def test_a_config_s_lone_exclude_string_is_one_pattern(ckpt_dir: Path, name: str, field: str, key: str):
    """Neither file is what ModelOpt writes (a list), but a string names one module, not one per character."""
    _edit_json(ckpt_dir / name, lambda c: c[field].update({key: "lm_head"}))
    qc = load_modelopt(ckpt_dir).quant_config
    assert set(qc.exclude_modules) == {"lm_head", "model.embed_tokens"}
    assert qc.excluded_by("lm_head") == "lm_head"


@pytest.mark.parametrize("value", [{"lm_head": True}, ["lm_head", 3], 7])
@pytest.mark.parametrize(
    "name, field, key",
    [("config.json", "quantization_config", "ignore"), ("hf_quant_config.json", "quantization", "exclude_modules")],
)
def test_error_exclude_patterns_not_strings(ckpt_dir: Path, name: str, field: str, key: str, value):
    f = ckpt_dir / name
    _edit_json(f, lambda c: c[field].update({key: value}))
    _expect_match(ckpt_dir, rf"^{_q(f)}: {field}.{key} must be a list of module patterns \(strings\), got ")


@pytest.mark.parametrize("name", ["config.json", "hf_quant_config.json", "model.safetensors.index.json"])
def test_error_json_file_does_not_parse(ckpt_dir: Path, name: str):
    f = ckpt_dir / name
    f.write_text('{"quantization": ')
    _expect_match(ckpt_dir, rf"^cannot parse {_q(f)}: Expecting value")


def test_error_tensors_overlap(ckpt_dir: Path):
    """q_proj's weight claims the bytes of o_proj's (same size, so its offsets still match its shape)."""
    f = ckpt_dir / "model.safetensors"
    o_proj = "model.layers.0.self_attn.o_proj.weight"

    def edit(header):
        header[Q + ".weight"]["data_offsets"] = header[o_proj]["data_offsets"]
        return header

    _edit_header(f, edit)
    pattern = (
        rf"^safetensors file {_q(f)} is corrupt: tensors {re.escape(repr(o_proj))} and "
        rf"{re.escape(repr(Q + '.weight'))} overlap$"
    )
    _expect_match(ckpt_dir, pattern)
    with pytest.raises(CheckpointError, match=pattern):
        load_safetensors(f)


def test_error_tensors_overlap_partially(tmp_path: Path):
    f = tmp_path / "x.safetensors"
    write_file(f, [("a", np.zeros(8, np.uint8)), ("b", np.zeros(8, np.uint8))])
    _edit_header(f, _entry("b", data_offsets=[4, 12]))  # a is [0, 8)
    f.write_bytes(f.read_bytes() + bytes(4))  # so that b's bytes lie within the file
    with pytest.raises(CheckpointError, match=rf"^safetensors file {_q(f)} is corrupt: tensors 'a' and 'b' overlap$"):
        SafetensorsFile(f)


def _bad_entry(f: Path, name: str) -> str:
    return rf"^safetensors file {_q(f)} is corrupt: the header entry of tensor {re.escape(repr(name))}"


@pytest.mark.parametrize("missing", ["dtype", "shape", "data_offsets"])
def test_error_header_entry_lacks_a_field(ckpt_dir: Path, missing: str):
    f = ckpt_dir / "model.safetensors"
    _edit_header(f, _entry(Q + ".weight", **{missing: ...}))
    _expect_match(ckpt_dir, _bad_entry(f, Q + ".weight") + r" lacks dtype/shape/data_offsets: \{")


@pytest.mark.parametrize("entry", [["F8_E4M3", [256, 256], [0, 65536]], "F8_E4M3", None])
def test_error_header_entry_not_an_object(ckpt_dir: Path, entry):
    f = ckpt_dir / "model.safetensors"
    _edit_header(f, lambda h: h | {Q + ".weight": entry})
    _expect_match(
        ckpt_dir, _bad_entry(f, Q + ".weight") + rf" lacks dtype/shape/data_offsets: {re.escape(repr(entry))}$"
    )


@pytest.mark.parametrize("dtype", ["C64", "F4", "f8_e4m3", "FP8", 8, None, [], {"F8": 1}])
def test_error_unsupported_dtype(ckpt_dir: Path, dtype):
    f = ckpt_dir / "model.safetensors"
    _edit_header(f, _entry(Q + ".weight", dtype=dtype))
    _expect_match(
        ckpt_dir,
        rf"^tensor {re.escape(repr(Q + '.weight'))} in safetensors file {_q(f)} has unsupported dtype "
        rf"{re.escape(repr(dtype))}; expected one of \['BF16', .*'U8'\]$",
    )


INVALID_FIELDS = {
    "shape": "has an invalid shape {}; expected a list of non-negative integers$",
    "data_offsets": r"has invalid data_offsets {}; expected \[begin, end\], 0 <= begin <= end$",
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *[("shape", v) for v in ([-256, -256], [256, 256.0], "256x256", None, [[256], 256], [True, 256])],
        ("data_offsets", [1583616, 1518080]),  # end before begin
        ("data_offsets", [-65536, 0]),  # negative
        ("data_offsets", [1518080]),  # one number
        ("data_offsets", [1518080, 1548080, 1583616]),  # three
        ("data_offsets", [1518080.0, 1583616.0]),  # floats
        ("data_offsets", "1518080:1583616"),
        ("data_offsets", None),
    ],
)
def test_error_invalid_shape_or_data_offsets(ckpt_dir: Path, field: str, value):
    f = ckpt_dir / "model.safetensors"
    _edit_header(f, _entry(Q + ".weight", **{field: value}))
    message = INVALID_FIELDS[field].format(re.escape(repr(value)))
    _expect_match(ckpt_dir, _bad_entry(f, Q + ".weight") + " " + message)


@pytest.mark.parametrize("header", [[], "model", 42, None])
def test_error_header_not_an_object(ckpt_dir: Path, header):
    f = ckpt_dir / "model.safetensors"
    _edit_header(f, lambda _: header)
    _expect_match(ckpt_dir, rf"^safetensors file {_q(f)} is corrupt: its header is not a JSON object$")
    with pytest.raises(CheckpointError, match="its header is not a JSON object"):
        load_safetensors(f)


@pytest.mark.parametrize(
    "value",
    [np.ones((4, 4), np.complex64), np.array([b"x", None], object), np.array(["abc"])],
    ids=["complex64", "object", "str"],
)
def test_save_error_dtype_without_safetensors_name(tmp_path: Path, value: np.ndarray):
    q = mx.quantize(jnp.ones((32, 64), jnp.float32))
    out = tmp_path / "out"
    dtype = re.escape(str(value.dtype))
    with pytest.raises(
        CheckpointError, match=rf"^cannot save tensor 'model\.rotary\.freqs': dtype {dtype} has no safetensors name$"
    ):
        save_modelopt(out, {"m.weight": q, "model.rotary.freqs": value})
    assert not out.exists()  # refused before anything is written
    # the writer itself names the file as well
    f = tmp_path / "x.safetensors"
    with pytest.raises(
        CheckpointError,
        match=rf"^cannot write tensor 'freqs' to {_q(f)}: dtype {dtype} has no safetensors name$",
    ):
        write_file(f, [("ok", np.zeros(4, np.float32)), ("freqs", value)])
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_save_error_1d_mxarray(tmp_path: Path):
    q = mx.quantize(jnp.ones(64, jnp.float32))
    assert q.shape == (64,)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"^cannot save MXArray 'm\.weight' of shape \(64,\): expected \[N, K\]$"):
        save_modelopt(out, {"m.weight": q})
    assert not out.exists()


# --- save refuses, before writing anything, every checkpoint load_modelopt would refuse ------------------------------

FP8, BF16 = ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16
SAVE_REFUSALS = {
    "float8 weight without its scale": (
        {"a.weight": np.zeros((8, 64), FP8)},
        "tensor 'a.weight' (float8_e4m3fn, shape [8, 64]) is a quantized (float8_e4m3fn) weight without its scale "
        "'a.weight_scale'",
    ),
    "scale without its weight": (
        {"a.weight_scale": np.zeros((8, 2), np.uint8)},
        "tensor 'a.weight_scale' (uint8, shape [8, 2]) is a weight scale, but its weight 'a.weight' is missing",
    ),
    "float8 tensor not a weight": (
        {"a.bias": np.zeros(64, FP8)},
        "tensor 'a.bias' (float8_e4m3fn, shape [64]) is float8_e4m3fn but is not a '.weight'",
    ),
    "scaled tensor not a weight": (
        {"a.freqs": np.zeros((4, 32), BF16), "a.freqs_scale": np.zeros((4, 1), np.uint8)},
        "tensor 'a.freqs' (bfloat16, shape [4, 32]) has a scale tensor 'a.freqs_scale' but is not a '.weight'",
    ),
    "another float8 dtype": (
        {"a.weight": np.zeros((8, 64), ml_dtypes.float8_e5m2)},
        "has dtype F8_E5M2; float8 tensors are only supported as MXFP8 weights",
    ),
    "bf16 weight with a scale": (
        {"a.weight": np.zeros((8, 64), BF16), "a.weight_scale": np.zeros((8, 2), np.uint8)},
        "tensor 'a.weight' (bfloat16, shape [8, 64]) has a weight scale 'a.weight_scale' but dtype BF16; MXFP8 "
        "weights must be F8_E4M3",
    ),
    "scale dtype": (
        {"a.weight": np.zeros((8, 64), FP8), "a.weight_scale": np.zeros((8, 2), np.float32)},
        "tensor 'a.weight_scale' (float32, shape [8, 2]) has dtype F32; MXFP8 weight scales must be U8",
    ),
    "scale shape": (
        {"a.weight": np.zeros((8, 64), FP8), "a.weight_scale": np.zeros((8, 4), np.uint8)},
        "has shape [8, 4]; weight 'a.weight' of shape [8, 64] needs a scale of shape [8, 2] ([N, K/32])",
    ),
    "K not a multiple of 32": (
        {"a.weight": np.zeros((8, 48), FP8), "a.weight_scale": np.zeros((8, 1), np.uint8)},
        "tensor 'a.weight' (float8_e4m3fn, shape [8, 48]) has shape [8, 48]; an MXFP8 weight must be [N, K] with K "
        "a multiple of 32",
    ),
    "another format's tensor": (
        {"a.weight": np.zeros((8, 64), BF16), "a.input_scale": np.ones((), np.float32)},
        "tensor 'a.input_scale' (float32, shape []) belongs to another quantization format (FP8/NVFP4",
    ),
}


@pytest.mark.parametrize(("tensors", "message"), SAVE_REFUSALS.values(), ids=SAVE_REFUSALS)
def test_save_refuses_what_load_would_refuse(tmp_path: Path, tensors, message: str):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as info:
        save_modelopt(out, tensors)
    msg = str(info.value)
    assert msg.startswith(f"cannot save to {str(out)!r}: "), msg
    assert message in msg, msg
    assert msg.endswith(" (load_modelopt would refuse the checkpoint; nothing was written)"), msg
    assert not out.exists()


def _saved_small(out: Path) -> dict[str, bytes]:
    """Save a small valid checkpoint to ``out``; its files' bytes."""
    save_modelopt(out, {"m.weight": mx.quantize(jnp.ones((32, 64), jnp.float32)), "m.norm": np.ones(64, np.float32)})
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize(
    ("tensors", "kwargs", "pattern"),
    [
        ({"a.weight": jnp.zeros((8, 64), jnp.float8_e4m3fn)}, {}, "without its scale 'a.weight_scale'"),
        ({"a.weight_scale": jnp.zeros((8, 2), jnp.uint8)}, {}, "its weight 'a.weight' is missing"),
        (
            {"lm_head.weight": np.zeros((8, 64), FP8), "lm_head.weight_scale": np.zeros((8, 2), np.uint8)},
            {"quant_config": QuantConfig()},
            "module 'lm_head' is excluded from quantization by pattern 'lm_head' of the quant config",
        ),
        ({"__metadata__": np.zeros(2, np.uint8)}, {}, "^cannot save tensor '__metadata__': safetensors reserves"),
        ({3: np.zeros(2, np.uint8)}, {}, "^cannot save tensor 3: tensor names must be strings, not int$"),
    ],
    ids=["float8 weight", "scale", "excluded pair", "__metadata__", "int name"],
)
def test_a_refused_save_leaves_the_previous_checkpoint_as_it_was(tmp_path: Path, tensors, kwargs, pattern: str):
    out = tmp_path / "out"
    before = _saved_small(out)
    with pytest.raises(CheckpointError, match=re.escape(pattern) if not pattern.startswith("^") else pattern):
        save_modelopt(out, tensors, **kwargs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_modelopt(out).quantized == ["m.weight"]


def test_save_plain_weight_and_scale_arrays_as_a_quantized_linear(tmp_path: Path):
    """A float8_e4m3fn '.weight' with its uint8 (or E8M0) '.weight_scale' is what load reads as an MXArray; only
    the unquantized 2-D float weight goes into exclude_modules."""
    q = mx.quantize(jnp.asarray(np.random.default_rng(0).standard_normal((32, 64)), jnp.float32))
    e8m0 = np.asarray(q.scale).view(ml_dtypes.float8_e8m0fnu)
    tensors = {
        "a.weight": q.data,
        "a.weight_scale": q.scale,
        "b.weight": np.asarray(q.data),
        "b.weight_scale": e8m0,
        "c.weight": np.ones((8, 64), BF16),
    }
    save_modelopt(tmp_path / "out", tensors)
    ckpt = load_modelopt(tmp_path / "out")
    assert ckpt.quantized == ["a.weight", "b.weight"]
    assert ckpt.quant_config.exclude_modules == ("c",)
    for name in ckpt.quantized:
        np.testing.assert_array_equal(_bytes(ckpt.tensors[name].data), _bytes(q.data))
        np.testing.assert_array_equal(_bytes(ckpt.tensors[name].scale), _bytes(q.scale))


# --- torch tensors (a state_dict()) --------------------------------------------------------------------------------


def test_quantize_state_dict_of_torch_tensors(tmp_path: Path):
    """A torch state dict quantizes as the same values in NumPy do; the other tensors come back as NumPy arrays of
    the same dtype and bytes (bf16 included, which NumPy has no dtype of its own for), and the result saves."""
    torch = pytest.importorskip("torch")
    f32 = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    state = {
        "a.weight": torch.from_numpy(f32),
        "b.weight": torch.from_numpy(f32).to(torch.bfloat16),
        "c.weight": torch.from_numpy(np.ascontiguousarray(f32.T)).T,  # not contiguous
        "lm_head.weight": torch.from_numpy(f32).to(torch.bfloat16),  # excluded
        "model.norm.weight": torch.ones(64, dtype=torch.bfloat16),
        "pos": torch.arange(4),  # int64
    }
    out = quantize_state_dict(state)
    assert [n for n, v in out.items() if isinstance(v, mx.MXArray)] == ["a.weight", "b.weight", "c.weight"]
    bf16 = f32.astype(BF16)
    assert np.array_equal(_bytes(bf16), state["b.weight"].view(torch.uint8).numpy().reshape(-1))
    for name, value in (("a.weight", f32), ("b.weight", bf16), ("c.weight", f32)):
        want = mx.quantize(jnp.asarray(value))
        np.testing.assert_array_equal(_bytes(out[name].data), _bytes(want.data), err_msg=name)
        np.testing.assert_array_equal(_bytes(out[name].scale), _bytes(want.scale), err_msg=name)
    for name in ("lm_head.weight", "model.norm.weight", "pos"):
        assert isinstance(out[name], np.ndarray), name
        assert str(out[name].dtype) == str(state[name].dtype).removeprefix("torch."), name
        np.testing.assert_array_equal(_bytes(out[name]), state[name].contiguous().view(torch.uint8).numpy().reshape(-1))

    save_modelopt(tmp_path / "out", out)
    ckpt = load_modelopt(tmp_path / "out", dtype=None)
    assert ckpt.quantized == ["a.weight", "b.weight", "c.weight"]
    assert ckpt.quant_config.exclude_modules == ("lm_head",)
    np.testing.assert_array_equal(_bytes(ckpt.tensors["lm_head.weight"]), _bytes(bf16))


def test_save_torch_tensors(tmp_path: Path):
    """save_modelopt takes torch tensors as they are, a float8_e4m3fn weight and its uint8 scale included."""
    torch = pytest.importorskip("torch")
    q = mx.quantize(jnp.asarray(np.random.default_rng(1).standard_normal((32, 64)), jnp.float32))
    state = {
        "m.weight": torch.from_numpy(np.asarray(q.data).view(np.uint8).copy()).view(torch.float8_e4m3fn),
        "m.weight_scale": torch.from_numpy(np.asarray(q.scale).copy()),
        "m.norm": torch.ones(64, dtype=torch.bfloat16).requires_grad_(),
    }
    save_modelopt(tmp_path / "out", state)
    ckpt = load_modelopt(tmp_path / "out", dtype=None)
    assert ckpt.quantized == ["m.weight"]
    np.testing.assert_array_equal(_bytes(ckpt.tensors["m.weight"].data), _bytes(q.data))
    np.testing.assert_array_equal(_bytes(ckpt.tensors["m.weight"].scale), _bytes(q.scale))
    assert ckpt.tensors["m.norm"].dtype == jnp.bfloat16


def test_torch_dtype_without_a_numpy_form(tmp_path: Path):
    torch = pytest.importorskip("torch")
    bad = {"m.freqs": torch.zeros((2, 3), dtype=torch.float8_e4m3fnuz)}
    with pytest.raises(
        CheckpointError,
        match=r"^quantize_state_dict: tensor 'm\.freqs' is a torch tensor of dtype float8_e4m3fnuz, shape \[2, 3\], "
        r"which has no NumPy form",
    ):
        quantize_state_dict(bad)
    with pytest.raises(CheckpointError, match=r"^cannot save tensor 'm\.freqs': it is a torch tensor of dtype"):
        save_modelopt(tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()


def test_checkpoint_module_does_not_import_torch():
    code = "import sys, mxfp8_xla.checkpoint; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr
