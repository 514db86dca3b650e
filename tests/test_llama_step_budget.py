"""benchmarks/llama_step_budget.py's arithmetic and projection shapes (the timings run on the GPU)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import llama_step_budget as sb  # noqa: E402
from bench_llama import block_config  # noqa: E402


def test_projections_are_a_llama3_8b_blocks_seven():
    assert sb.projections(block_config(4)) == {
        "q": (4096, 4096),
        "k": (1024, 4096),
        "v": (1024, 4096),
        "o": (4096, 4096),
        "gate": (14336, 4096),
        "up": (14336, 4096),
        "down": (4096, 14336),
    }


def test_the_ceiling_is_bf16_bytes_over_mxfp8_bytes():
    assert pytest.approx(2 / (1 + 1 / 32)) == sb.CEILING


def test_budget_splits_a_block_into_projections_and_the_rest():
    gemms = {"a": {"bf16_us": 60.0, "mxfp8_us": 50.0}, "b": {"bf16_us": 40.0, "mxfp8_us": 30.0}}
    row = sb.budget(step_bf16_us=600.0, step_mxfp8_us=480.0, layers=4, gemms=gemms)
    assert row["block_bf16_us"] == 150.0 and row["block_mxfp8_us"] == 120.0
    assert row["gemm_bf16_us"] == 100.0 and row["gemm_mxfp8_us"] == 80.0
    assert row["rest_bf16_us"] == 50.0 and row["rest_mxfp8_us"] == 40.0
    assert row["step_ratio"] == pytest.approx(1.25) and row["gemm_ratio"] == pytest.approx(1.25)
    assert row["step_ratio_at_ceiling"] == pytest.approx(150.0 / (50.0 + 100.0 / sb.CEILING))


def test_fused_projections_are_the_shapes_issue_5_benchmarks():
    assert sb.projections(block_config(4), fused=True) == {
        "qkv": (6144, 4096),
        "o": (4096, 4096),
        "gate_up": (28672, 4096),
        "down": (4096, 14336),
    }
