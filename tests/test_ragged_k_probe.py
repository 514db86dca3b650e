"""benchmarks/ragged_k_probe.py on CPU: the candidates it times, and that each forced route computes emulation's
product (the kernels run in interpret mode here; on the device they run for real)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import H100

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ragged_k_probe  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper, hopper_mosaic  # noqa: E402
from mxfp8_xla.backends.select import override_capability  # noqa: E402


def test_candidates_name_the_route_cublas_and_every_k_tiling():
    got = ragged_k_probe.candidates(32, 3584, 2368)  # K % 128 != 0: the Triton GEMM's route, no Mosaic candidate
    assert got["route"] == hopper.default_config(32, 3584, 2368) and got["cublas"] is None
    assert {"bk64_s1", "bk64_s37", "bk32_s2", "bk32_s74"} <= set(got) and not any(k.startswith("mosaic") for k in got)


def test_where_the_route_decodes_for_cublas_its_candidate_is_none():
    assert ragged_k_probe.candidates(48, 3584, 2368)["route"] is None  # a 37-way split: partial sums 3x the weight


def test_where_the_mosaic_kernel_takes_the_shape_the_route_is_its_config_and_its_splits_are_candidates():
    got = ragged_k_probe.candidates(32, 3584, 2432)  # 19 tiles of 128
    assert got["route"] == hopper.mosaic_config(32, 3584, 2432)
    assert [got[f"mosaic_s{d}"].split_k for d in (1, 19)] == [1, 19]
    assert all(isinstance(got[f"mosaic_s{d}"], hopper_mosaic.MosaicConfig) for d in (1, 19))


@pytest.mark.parametrize("label", ["route", "cublas", "bk64_s37", "bk32_s74"])
def test_each_forced_route_computes_emulations_product(label, rng):
    m, n, k = 20, 100, 2368  # 37 tiles of 64, split 37 ways by the route
    x = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32))
    w = mx.quantize(rng.standard_normal((n, k)).astype(np.float32))
    cfg = ragged_k_probe.candidates(m, n, k)[label]
    with override_capability(H100), hopper.interpret_mode():
        got = jax.jit(ragged_k_probe.route_with(cfg, jnp.float32))(x, w)
    want = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(jnp.abs(want).max()))
