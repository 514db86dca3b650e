"""benchmarks/bench_llama.py on CPU, tiny dimensions: the script's plumbing, fused norms included."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_llama  # noqa: E402


def test_tiny_decode_with_fused_projections_and_norms(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    argv = ["bench_llama.py", "--tiny", "--layers", "2", "--batches", "1", "--no-prefill", "--bf16-layouts", "nk"]
    monkeypatch.setattr(sys, "argv", [*argv, "--fuse-projections", "--fuse-norms"])
    bench_llama.main()
    out = json.loads((tmp_path / "bench_llama.json").read_text())
    assert out["fuse_projections"] and out["fuse_norms"]
    assert [row["model"] for row in out["rows"]] == ["bf16_nk", "mxfp8"]
    assert all(row["decode_b1_ms_per_step"] > 0 for row in out["rows"])


def test_float32_params_on_bf16_activations(tmp_path, monkeypatch):
    """``--param-dtype float32``: the models' norm weights, embeddings and head are float32 (on the GPU the MXFP8
    model's fused norms run the ``_nf32`` kernels), recorded in the JSON."""
    monkeypatch.setenv("OUT", str(tmp_path))
    argv = ["bench_llama.py", "--tiny", "--layers", "1", "--batches", "1", "--no-prefill", "--bf16-layouts", "nk"]
    monkeypatch.setattr(sys, "argv", [*argv, "--fuse-projections", "--fuse-norms", "--param-dtype", "float32"])
    bench_llama.main()
    out = json.loads((tmp_path / "bench_llama.json").read_text())
    assert (out["dtype"], out["param_dtype"]) == ("bfloat16", "float32")
    assert [row["model"] for row in out["rows"]] == ["bf16_nk", "mxfp8"]
    assert all(row["decode_b1_ms_per_step"] > 0 for row in out["rows"])
