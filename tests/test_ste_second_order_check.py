"""benchmarks/ste_second_order_check.py on CPU (emulation, small shapes): its Hessian-vector products pass, and
train mode's jitted first-order step, unrolled and scanned, needs no more memory than the baseline that saves only
the quantized operands (the GPU runs it with the hopper backend)."""

import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ste_second_order_check as check  # noqa: E402


@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_hessian_vector_products_pass(out_dtype) -> None:
    case = check.hvp_case("emulation", m=24, n=64, k=256, out_dtype=out_dtype)
    assert case["ok"], case


def test_the_hessian_vector_product_in_a_scan_passes() -> None:
    case = check.hvp_case("emulation", m=24, n=64, k=256, out_dtype=jnp.float32, scanned=True)
    assert case["ok"], case


@pytest.mark.parametrize("scanned", [False, True], ids=["unrolled", "scan"])
def test_first_order_step_needs_no_more_memory_than_quantized_residuals(scanned: bool) -> None:
    case = check.first_order_case("emulation", m=64, width=128, layers=4, scanned=scanned, iters=None)
    assert case["ok"], case
    assert case["grad_diff"] == 0.0, case  # the same program, up to XLA's naming


def test_main_writes_every_case(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    args = ["--backend", "emulation", "--rows", "8", "--width", "128", "--hvp-n", "32", "--step-rows", "16"]
    assert check.main([*args, "--layers", "2", "--iters", "2"]) == 0
    assert (tmp_path / "ste_second_order_check.json").exists()
