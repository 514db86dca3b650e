"""benchmarks/route_check.py on CPU: the grid of shapes it checks, and that it flags a product that leaves rows
unwritten (the GPU kernels themselves run on the device)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import route_check  # noqa: E402

from mxfp8_xla import quantize  # noqa: E402
from mxfp8_xla.backends import cuda_gemv, emulation, hopper  # noqa: E402


def test_the_grid_crosses_every_routes_row_and_k_limits():
    gemv = {1, 2, cuda_gemv.MMA_ROWS.start, cuda_gemv.MMA_ROWS.stop - 1}  # the GEMV kernels' first and last rows
    pallas_mosaic_cublas = {cuda_gemv.MMA_ROWS.stop, 16, 17, hopper.SMALL_M_MAX, hopper.SMALL_M_MAX + 1, 256, 2048}
    assert gemv | pallas_mosaic_cublas <= set(route_check.ROWS)
    assert {128, cuda_gemv.MMA_MAX_K, cuda_gemv.MAX_K[2], cuda_gemv.MAX_K[1]} <= set(route_check.DEPTHS)
    assert all(k % 128 == 0 and n % 1024 == 0 for _, n, k in route_check.CASES)


def test_a_product_equal_to_emulation_passes_and_one_with_rows_left_unwritten_fails():
    def exact(x, w):
        return emulation.matmul(quantize(x), w, jnp.float32)

    def rows_4_to_7_unwritten(x, w):
        return exact(x, w).at[4:8].set(0.0)

    cases = ((3, 1024, 128), (8, 1024, 128))
    assert all(row["ok"] and row["kernels"] == [] for row in route_check.check(cases, exact).values())
    results = route_check.check(cases, rows_4_to_7_unwritten)
    assert results["M=3 N=1024 K=128"]["ok"] and not results["M=8 N=1024 K=128"]["ok"]
    assert results["M=8 N=1024 K=128"]["rel_err"] > 0.5


def test_eager_calls_the_product_outside_jit():
    def traced_or_not(x, w):
        assert isinstance(x, jax.core.Tracer) is not eager
        return emulation.matmul(quantize(x), w, jnp.float32)

    for eager in (False, True):
        assert all(row["ok"] for row in route_check.check(((3, 1024, 128),), traced_or_not, eager=eager).values())


def test_dtype_sets_the_activations_dtype():
    def float32_only(x, w):
        assert x.dtype == jnp.float32
        return emulation.matmul(quantize(x), w, jnp.float32)

    assert all(row["ok"] for row in route_check.check(((3, 1024, 128),), float32_only, dtype=jnp.float32).values())


def test_a_case_that_raises_fails_with_its_exception():
    def refuses(x, w):
        raise ValueError("no kernel takes this shape")

    (row,) = route_check.check(((5, 1024, 128),), refuses).values()
    assert not row["ok"] and row["error"].startswith("ValueError: no kernel takes this shape")


def test_rows_select_the_cases_of_those_m():
    assert route_check.selected(None) == route_check.CASES
    cases = route_check.selected("65,2048")
    assert {m for m, _, _ in cases} == {65, 2048}
    assert len(cases) == 2 * len(route_check.WIDTHS) * len(route_check.DEPTHS)
    with pytest.raises(ValueError, match=r"\[7\] outside ROWS"):
        route_check.selected("7")


def test_widths_and_depths_replace_the_grids_own():
    assert route_check.grid(None, None) == route_check.CASES
    cases = route_check.grid("14336", "4096,8192")
    assert cases == tuple((m, 14336, k) for m in route_check.ROWS for k in (4096, 8192))
    assert route_check.selected("64", cases) == ((64, 14336, 4096), (64, 14336, 8192))


def test_a_16_bit_output_passes_within_its_rounding_and_a_wrong_row_still_fails():
    assert route_check.tolerance_for(jnp.float32) == route_check.TOLERANCE
    assert route_check.tolerance_for(jnp.bfloat16) == route_check.TOLERANCE + 2.0**-7
    assert route_check.tolerance_for(jnp.float16) == route_check.TOLERANCE + 2.0**-10

    def rounded(x, w):
        return emulation.matmul(quantize(x), w, jnp.bfloat16)

    def row_unwritten(x, w):
        return rounded(x, w).at[2].set(0)

    cases, tolerance = ((3, 1024, 128),), route_check.tolerance_for(jnp.bfloat16)
    (row,) = route_check.check(cases, rounded, tolerance=tolerance).values()
    assert row["ok"] and route_check.TOLERANCE < row["rel_err"] <= 2.0**-8  # at most half a bf16 ulp of the largest
    (row,) = route_check.check(cases, row_unwritten, tolerance=tolerance).values()
    assert not row["ok"] and row["rel_err"] > 0.1


def test_the_ragged_grid_is_off_the_kernels_tiles_at_every_row_count():
    assert {m for m, _, _ in route_check.RAGGED_CASES} == set(route_check.ROWS)
    assert all(n % 64 or k % 128 or k > cuda_gemv.MMA_MAX_K for _, n, k in route_check.RAGGED_CASES)
    assert route_check.selected("1,2", route_check.RAGGED_CASES) == tuple(
        case for case in route_check.RAGGED_CASES if case[0] in (1, 2)
    )
