"""benchmarks/gemv_f32_check.py's edge cases on CPU, through emulation: they pass there, and they catch a kernel that
rounds float32 rows to bf16 before quantizing them (the double rounding the float32-row kernels exist to avoid)."""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gemv_f32_check  # noqa: E402
from conftest import H100  # noqa: E402

from mxfp8_xla import quantize  # noqa: E402
from mxfp8_xla.backends import emulation, hopper, ptx_launch  # noqa: E402
from mxfp8_xla.backends.select import override_capability  # noqa: E402


def exact(x, w):
    return emulation.matmul(quantize(x), w, jnp.float32)


def through_bf16(x, w):
    return emulation.matmul(quantize(x.astype(jnp.bfloat16)), w, jnp.float32)


def test_the_edge_cases_pass_for_emulation_itself():
    cases = gemv_f32_check.edges({"1 row": exact}, gemv=False)
    assert [(c["dtype"], c["ok"]) for c in cases] == [("float32", True), ("float16", True), ("bfloat16", True)]


def test_rounding_float32_rows_to_bf16_first_fails_the_float32_activation_check():
    row = gemv_f32_check.float32_row()
    case = gemv_f32_check.edge_case(through_bf16, row, gemv=False)
    assert not case["ok"] and any(p.startswith("activation:") for p in case["problems"])


def test_the_float16_row_is_finite_float16_and_passes_through_emulation():
    row = gemv_f32_check.float16_row()
    assert row.dtype == np.float16 and np.isfinite(row).all()
    assert gemv_f32_check.edge_case(exact, row, gemv=False)["ok"]


@pytest.mark.parametrize("name", ["+inf", "-inf", "nan"])
def test_poisoned_rows_hold_one_non_finite_element(name):
    row = gemv_f32_check.float32_row()
    bad = gemv_f32_check.poisoned(row)[name]
    assert (~np.isfinite(bad)).sum() == 1 and np.isfinite(row).all()


def test_no_gemv_launch_fails_the_check_on_the_device():
    case = gemv_f32_check.edge_case(exact, gemv_f32_check.float32_row(), gemv=True)
    assert not case["ok"] and case["problems"][0] == "kernels [], expected the GEMV kernels for float32 rows"


@pytest.mark.parametrize("layout", gemv_f32_check.LAYOUTS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_every_layout_traces_the_gemv_kernels_the_device_check_expects(monkeypatch, layout, dtype):
    """On an H100 (its capability faked) each layout's edge operands reach the GEMV kernels, the _xf32 ones exactly
    for float32 and float16 rows."""
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, w = gemv_f32_check.edge_operands()
    with override_capability(H100):
        kernels = ptx_launch.traced_launches(gemv_f32_check.LAYOUTS[layout], x[:1].astype(dtype), w)
    assert kernels and all(("_xf32_" in k) == (dtype != jnp.bfloat16) for k in kernels), kernels
