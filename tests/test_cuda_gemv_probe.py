"""benchmarks/cuda_gemv_probe.py on CPU: the launch's jaxpr, its refusals, the grid, the activation edge vectors,
and that every configuration it asks for is instantiated (the kernel runs on the GPU)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import H100, cuda_kernel_names, needs_gpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cuda_gemv_probe as probe  # noqa: E402

from mxfp8_xla import MXArray, quantize  # noqa: E402
from mxfp8_xla.backends import emulation, ptx_launch  # noqa: E402
from mxfp8_xla.backends.select import override_capability  # noqa: E402


def weight(n: int, k: int) -> MXArray:
    return MXArray(jnp.ones((n, k), jnp.float8_e4m3fn), jnp.full((n, k // 32), 127, jnp.uint8))


@pytest.mark.parametrize("out_dtype, suffix", [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")])
def test_gemv_traces_to_one_launch_with_the_rows_shared_memory(out_dtype, suffix):
    x = jnp.ones((1, 14336), jnp.bfloat16)
    fn = lambda x, w: probe.gemv(x, w, (8, 2, 4, 1, 0), exact=0, out_dtype=out_dtype)  # noqa: E731
    jaxpr = jax.make_jaxpr(fn)(x, weight(4096, 14336)).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert launch.params["name"] == f"mxfp8_gemv_w8_g2_c4_p1_e0_{suffix}"
    assert launch.params["grid"] == (4096 // 16, 1) and launch.params["warps"] == 8
    assert launch.params["smem"] == 4 * 14336  # the decoded row in float32
    assert jaxpr.outvars[0].aval.shape == (1, 4096) and jaxpr.outvars[0].aval.dtype == out_dtype


def test_a_register_cap_is_its_own_kernel():
    jaxpr = jax.make_jaxpr(lambda x, w: probe.gemv(x, w, probe.Config(8, 2, 4, 0, 24, 3)))(
        jnp.ones((1, 4096), jnp.bfloat16), weight(14336, 4096)
    ).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert launch.params["name"] == "mxfp8_gemv_w8_g2_c4_p0_e1_b3_bf16" and launch.params["grid"] == (3 * 132, 1)


def test_same_bits_counts_nans_equal_and_tells_signed_zeros_apart():
    nan_a, nan_b = np.array([np.nan], np.float32), np.array([-np.nan], np.float32)
    assert probe.same_bits(np.array([1.0, np.nan], np.float32), np.array([1.0, np.nan], np.float32))
    assert probe.same_bits(nan_a, nan_b)
    assert not probe.same_bits(np.array([0.0], np.float32), np.array([-0.0], np.float32))
    assert not probe.same_bits(np.array([1.0], np.float32), np.array([np.nan], np.float32))


@pytest.mark.parametrize(
    "x, n, k",
    [
        (jnp.ones((2, 4096), jnp.bfloat16), 1024, 4096),  # two rows
        (jnp.ones((1, 4096), jnp.float32), 1024, 4096),  # not bf16
        (jnp.ones((1, 3584), jnp.bfloat16), 1024, 3584),  # K not a whole number of 2048-byte rounds
        (jnp.ones((1, 4096), jnp.bfloat16), 1020, 4096),  # N not a whole number of CTAs (8 rows)
    ],
)
def test_gemv_refuses_what_the_kernel_cannot_take(x, n, k):
    with pytest.raises(ValueError, match="does not fit"):
        probe.gemv(x, weight(n, k), (4, 2, 4, 0, 0))


def test_fits_needs_whole_rounds_and_whole_ctas_unless_the_warps_loop_over_the_rows():
    assert probe.fits((8, 4, 2, 0, 0), 14336, 4096) and probe.fits((4, 2, 4, 1, 0), 4096, 14336)
    assert not probe.fits((8, 4, 4, 0, 0), 14336, 14336 - 512) and not probe.fits((8, 4, 2, 0, 0), 1020, 4096)
    assert probe.fits((8, 4, 2, 0, 32), 1020, 4096)  # persistent warps take any whole number of groups


@pytest.mark.parametrize(
    "cfg, n, ctas",
    [
        ((8, 1, 4, 0, 0), 14336, 1792),  # one CTA per 8 rows
        ((8, 1, 4, 0, 32), 14336, 4 * 132),  # 4 CTAs of 8 warps per SM
        ((16, 2, 4, 0, 16), 14336, 132),
        ((8, 4, 4, 0, 32), 1024, 32),  # fewer rows than the persistent grid
    ],
)
def test_grid(cfg, n, ctas):
    assert probe.grid(cfg, n) == ctas


def test_a_split_kernel_takes_k_exactly_and_units_of_its_rows():
    cfg = probe.Split(8, 1, 4, 2)
    assert probe.fits(cfg, 14336, 4096) and not probe.fits(cfg, 14336, 8192) and not probe.fits(cfg, 14334, 4096)
    assert probe.grid(cfg, 14336) == 2 * 132 and probe.grid(cfg, 512) == 128
    jaxpr = jax.make_jaxpr(lambda x, w: probe.gemv(x, w, cfg, out_dtype=jnp.float32))(
        jnp.ones((1, 4096), jnp.bfloat16), weight(14336, 4096)
    ).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert launch.params["name"] == "mxfp8_gemv_split_c1_r4_f32" and launch.params["smem"] == 0
    assert launch.params["warps"] == 8
    with pytest.raises(ValueError, match="does not fit"):
        probe.gemv(jnp.ones((1, 4096), jnp.bfloat16), weight(14336, 4096), cfg, exact=0)  # no partial-sum scaling


def test_every_llama_shape_has_a_configuration():
    for n, k in probe.GEMV_SHAPES:
        assert any(probe.fits(cfg, n, k) for cfg in probe.CONFIGS)


@needs_gpp
def test_every_configuration_is_instantiated_both_ways_and_in_both_dtypes():
    names = cuda_kernel_names(probe.SOURCE, "mxfp8_gemv_", "MXFP8_GEMV_PROBE")
    wanted = {
        probe.kernel_name(cfg, e, dtype)
        for cfg in (
            *probe.CONFIGS,
            *(cfg for cfgs in probe.ROW_CONFIGS.values() for cfg in cfgs),
            probe.Config(4, 1, 2, 0, 0),
            probe.Split(2, 1, 4, 1, 2),
        )
        # the last two: the edge part's
        for e in probe.exacts(cfg)
        for dtype in (jnp.bfloat16, jnp.float32)
    }
    assert all(any(part in n for n in wanted) for part in ("_e0_", "_b3_", "split_c2", "_m2_", "_m4_"))
    assert wanted <= names


def test_activation_vectors_cover_the_quantization_rules_edges():
    finite, poisoned = probe.activation_vectors()
    assert finite.dtype == jnp.bfloat16 and np.isfinite(finite.astype(np.float32)).all()
    scale = np.asarray(quantize(jnp.asarray(finite)[None]).scale)[0].astype(int)
    assert scale[1] == 0  # a zero block
    assert scale[2] == 0 and scale[7] == 0  # subnormals and a tiny block: e clamps at -127
    assert scale[3] == 127 + 119  # near bf16's largest
    assert scale[4] == 127 and scale[5] == 127 - 13 and scale[6] == 127 - 12  # amax 448; the power-of-two boundary
    data = np.asarray(quantize(jnp.asarray(finite)[None]).data.astype(jnp.float32))[0, 128:138]
    np.testing.assert_array_equal(data, [448, 1, 1.25, -2, 16, 20, -0.01953125, 0, 0.005859375, 288])  # ties to even
    for y in poisoned:
        assert (~np.isfinite(y.astype(np.float32))).sum() == 1


def test_edges_harness_finds_no_difference_between_emulation_and_itself(monkeypatch):
    """The edge part, run on CPU with emulation standing in for both kernels: the harness must report nothing."""
    emulated = lambda x, w, *_, **__: emulation.matmul(quantize(x), w, jnp.float32)  # noqa: E731
    monkeypatch.setattr(probe, "gemv", emulated)
    monkeypatch.setattr(probe, "library", emulated)
    monkeypatch.setattr(probe, "write_json", lambda *a: None)
    results = {}
    probe.edges(results)
    assert set(results) == {"edges exact1", "edges exact0", "edges split_m2", "edges library", "edges library_m2"}
    for label in ("exact1", "exact0", "split_m2", "library", "library_m2"):
        row = results[f"edges {label}"]
        assert row["kernels traced"] == [] and row["weight: nonfinite_differ (row, col, kernel, emulation)"] == []
        # the *_m2 labels run emulation on two rows, whose float32 sums XLA orders differently from one row's
        assert row["weight: finite_rel_err"] == (0.0 if "m2" not in label else pytest.approx(0.0, abs=1e-6))
        assert row["activation: identical"]
        assert all(row[f"activation: {name} in one block, outputs NaN (of 1024)"] == 1024 for name in ("+inf", "nan"))


@pytest.fixture
def emulated_timing(monkeypatch):
    """The probe on CPU: emulation stands in for every kernel, the timer answers 10 us, nothing is written, and each
    shape gets two operand sets (the device's rotate through 150 MB of weights, which only the timer needs)."""
    operands = probe.operands
    monkeypatch.setattr(probe, "operands", lambda n, k, m: operands(n, k, m, copies=2))
    emulated = lambda x, w, *_, out_dtype=jnp.bfloat16, **__: emulation.matmul(quantize(x), w, out_dtype)  # noqa: E731
    monkeypatch.setattr(probe, "gemv", emulated)
    monkeypatch.setattr(probe.hopper, "matmul", lambda x, w, dtype: emulation.matmul(quantize(x), w, dtype))
    monkeypatch.setattr(probe, "loop_time", lambda *a, **k: 1e-5)
    monkeypatch.setattr(probe, "write_json", lambda *a: None)
    return monkeypatch


def test_sweep_harness_times_the_configurations_it_is_given(emulated_timing):
    """The sweep, run on CPU with emulation standing in for every kernel and a constant timer: each configuration
    given gets a cell, and the best of each family is timed again against the baselines."""
    emulated_timing.setattr(probe, "GEMV_SHAPES", ((1024, 4096),))
    splits = tuple(c for c in probe.CONFIGS if isinstance(c, probe.Split) and probe.fits(c, 1024, 4096))
    results = {}
    probe.sweep(results, (probe.Config(8, 2, 4, 0, 32), *splits))
    row = results["(1024, 4096)"]
    assert set(row["cells"]) == {"w8_g2_c4_p0_wps32_b0", *map(probe.label_of, splits)}
    assert row["best row"]["label"] == "w8_g2_c4_p0_wps32_b0" and row["best split"]["label"].startswith("split_")
    assert row["best row"]["exact0_us"] == 10.0 and "exact0_us" not in row["best split"]


def test_a_multi_row_split_kernel_takes_its_rows_and_writes_them_all():
    (cfg,) = probe.ROW_CONFIGS[4]
    jaxpr = jax.make_jaxpr(lambda x, w: probe.gemv(x, w, cfg))(jnp.ones((4, 4096), jnp.bfloat16), weight(14336, 4096))
    (launch,) = [e for e in jaxpr.jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert launch.params["name"] == "mxfp8_gemv_split_c1_r4_m4_bf16" and launch.params["grid"] == (2 * 132, 1)
    assert jaxpr.jaxpr.outvars[0].aval.shape == (4, 14336)
    with pytest.raises(ValueError, match="does not fit"):
        probe.gemv(jnp.ones((2, 4096), jnp.bfloat16), weight(14336, 4096), cfg)  # 2 rows into the 4-row kernel


def test_rows_sweep_harness_checks_and_times_every_k_4096_shape(emulated_timing):
    emulated_timing.setattr(probe, "GEMV_SHAPES", ((1024, 4096), (512, 1024)))
    results = {}
    probe.rows_sweep(results, (2, 4))
    labels = {m: [probe.label_of(cfg) for cfg in probe.ROW_CONFIGS[m]] for m in (2, 4)}
    assert len(labels[2]) == 2 and set(results) == {f"rows (1024, 4096) M={m} {c}" for m in (2, 4) for c in labels[m]}
    assert all(row["rel_err_f32_out"] == 0.0 and row["split_us"] == 10.0 for row in results.values())


def test_route_sweep_harness_checks_and_times_both_routes_at_every_k_4096_shape(emulated_timing):
    emulated_timing.setattr(probe, "GEMV_SHAPES", ((1024, 4096), (512, 1024)))
    results = {}
    probe.route_sweep(results, (3, 8))
    assert set(results) == {"route (1024, 4096) M=3", "route (1024, 4096) M=8"}  # K = 4096 only
    for row in results.values():
        assert row["auto_us"] == row["pallas_us"] == 10.0 and row["auto_rel_err_f32_out"] == 0.0
        assert row["auto_kernels"] == row["pallas_kernels"] == []  # emulation stands in for the backend


@pytest.mark.parametrize("m", [3, 8])
def test_the_edge_rows_reach_the_tensor_core_kernel_through_the_library(monkeypatch, m):
    monkeypatch.delenv(probe.hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, w = jnp.ones((1, 1024), jnp.bfloat16), weight(128, 1024)
    run = probe.row_of_many_wide(probe.library, m)
    with override_capability(H100):
        assert ptx_launch.traced_launches(run, x, w) == ["mxfp8_gemv_mma_r8_f32"]
        assert jax.eval_shape(run, x, w).shape == (1, 128)


def test_mma_smem_asks_the_tensor_core_launches_only_for_shared_memory(monkeypatch):
    monkeypatch.delenv(probe.hopper.SMALL_M_KERNEL_ENV, raising=False)
    asked, launch = [], ptx_launch.launch

    def recording(*operands, name: str, smem: int = 0, **kwargs):
        asked.append((name, smem))
        return launch(*operands, name=name, smem=smem, **kwargs)

    monkeypatch.setattr(ptx_launch, "launch", recording)
    trace = lambda m: jax.make_jaxpr(probe.library)(jnp.ones((m, 4096), jnp.bfloat16), weight(14336, 4096))  # noqa: E731
    with override_capability(H100):
        with probe.asking_mma_smem(163840):
            trace(8), trace(1)
        trace(3)
    assert asked == [("mxfp8_gemv_mma_r8_f32", 163840), ("mxfp8_gemv_split_c1_r4_f32", 0), ("mxfp8_gemv_mma_r8_f32", 0)]


@pytest.mark.parametrize("m, nt", [(1, 1), (8, 1), (9, 2), (16, 2)])
def test_the_tensor_core_kernel_takes_8_rows_a_tile_and_its_shared_memory_holds_them(m, nt):
    cfg, name = probe.Mma(8, 2), f"mxfp8_gemv_mma_t{nt}_f32"
    fn = lambda x, w: probe.gemv_mma(x, w, cfg, out_dtype=jnp.float32)  # noqa: E731
    jaxpr = jax.make_jaxpr(fn)(jnp.ones((m, 4096), jnp.bfloat16), weight(14336, 4096)).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert launch.params["name"] == name and launch.params["warps"] == 8
    # 8 NT rows of E4M3 bytes at stride K + 32, their float32 factors, a block's largest, two buffers of 8 warps' sums
    assert launch.params["smem"] == 8 * nt * 4128 + 4 * 8 * nt * 128 + 4 * 128 + 2 * 8 * 16 * 8 * nt * 4
    assert launch.params["grid"] == (2 * 132, 1) and jaxpr.outvars[0].aval.shape == (m, 14336)


def test_the_tensor_core_grid_keeps_only_the_ctas_shared_memory_holds():
    assert probe.mma_grid(probe.Mma(14, 1), 8, 4096, 14336) == 132  # 143 KB a CTA: one an SM
    assert probe.mma_grid(probe.Mma(8, 2), 8, 4096, 14336) == 132
    assert probe.mma_grid(probe.Mma(8, 2), 8, 1024, 4096) == 64  # one CTA a tile of 16 rows
    assert not probe.mma_fits(probe.Mma(8, 2), 16, 4096, 14336)  # 16 rows of K = 14336 exceed 227 KB


@pytest.mark.parametrize(
    "x, n, k",
    [
        (jnp.ones((17, 4096), jnp.bfloat16), 1024, 4096),  # more than 16 rows
        (jnp.ones((8, 4096), jnp.float32), 1024, 4096),  # not bf16
        (jnp.ones((8, 4096), jnp.bfloat16), 1000, 4096),  # N not whole 16-row tiles
        (jnp.ones((8, 1536), jnp.bfloat16), 1024, 1536),  # 48 blocks: not whole steps of 8 warps' 8 blocks
    ],
)
def test_the_tensor_core_kernel_refuses_what_it_cannot_take(x, n, k):
    with pytest.raises(ValueError, match="does not fit"):
        probe.gemv_mma(x, weight(n, k), probe.Mma(8, 2))


@needs_gpp
def test_the_tensor_core_kernels_are_instantiated():
    names = cuda_kernel_names(probe.MMA_SOURCE, "mxfp8_gemv_mma_t")  # not the library's mma_r8
    wanted = {f"mxfp8_gemv_mma_t{nt}{v}_{s}" for nt in (1, 2) for v in ("", "_f8") for s in ("bf16", "f32")}
    wanted |= {f"mxfp8_gemv_mma_t1{v}_{s}" for v in ("_loads", "_rowloads") for s in ("bf16", "f32")}
    assert names == wanted


def test_mma_sweep_harness_checks_and_times_each_configuration_that_fits(emulated_timing):
    emulated_timing.setattr(probe, "gemv_mma", lambda x, w, cfg, out_dtype=jnp.bfloat16: emulation.matmul(
        quantize(x), w, out_dtype))  # fmt: skip
    emulated_timing.setattr(probe, "GEMV_SHAPES", ((1024, 4096), (512, 1024)))
    emulated_timing.setattr(probe, "MMA_CONFIGS", (*probe.MMA_CONFIGS, probe.Mma(4, 4)))
    results = {}
    probe.mma_sweep(results, (1, 16))
    assert set(results) == {f"mma ({n}, {k}) M={m}" for n, k in ((1024, 4096), (512, 1024)) for m in (1, 16)}
    labels = [c.label for c in probe.MMA_CONFIGS]
    for key, row in results.items():
        # K = 4096: 128 blocks, whole steps of 8 blocks for 16, 8 or 4 warps; K = 1024: 32 blocks, for 4 warps only;
        # the weight-stream variant takes up to 8 rows
        streams = ("_loads", "_rowloads")
        fits = [
            c.label for c in probe.MMA_CONFIGS if c.warps != 14 and (c.variant not in streams or key.endswith("M=1"))
        ]
        fits = fits if "(1024, 4096)" in key else ["w4_sm4"]
        assert [lab for lab in labels if lab in row] == fits
        assert all(row[lab]["us"] == 10.0 and row[lab]["rel_err_f32_out"] < 1e-6 for lab in fits)


def test_gemv_f32_out_runs_the_float32_kernel_and_rounds_in_xla(monkeypatch):
    monkeypatch.delenv(probe.hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, w = jnp.ones((1, 4096), jnp.bfloat16), weight(14336, 4096)
    product = lambda x: probe.hopper.matmul(x, w, jnp.bfloat16)  # noqa: E731
    with override_capability(H100):
        assert ptx_launch.traced_launches(product, x) == ["mxfp8_gemv_split_c1_r4_bf16"]
        with probe.gemv_f32_out():
            assert ptx_launch.traced_launches(product, x) == ["mxfp8_gemv_split_c1_r4_f32"]
            assert jax.eval_shape(product, x).dtype == jnp.bfloat16
        assert ptx_launch.traced_launches(product, x) == ["mxfp8_gemv_split_c1_r4_bf16"]


def test_every_llama_model_the_probe_names_is_defined():
    assert {"bf16_nk", "mxfp8", "mxfp8_pallas", "mxfp8_f32out"} == set(probe.LLAMA_MODELS)
