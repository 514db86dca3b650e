"""benchmarks/gemv_bulk_probe.py and xla_activation_probe.py on CPU: the launches they trace (kernel, grid, warps,
shared memory), which ring configurations fit an SM, that every kernel they name is instantiated, and the XLA
activation pass they swap in (the kernels themselves run on the GPU)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cuda_kernel_names, needs_gpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gemv_bulk_probe as probe  # noqa: E402
import xla_activation_probe as activation_probe  # noqa: E402

from mxfp8_xla import MXArray, dequantize, quantize  # noqa: E402
from mxfp8_xla.backends import hopper, ptx_launch  # noqa: E402


def weight(n: int, k: int) -> MXArray:
    return MXArray(jnp.ones((n, k), jnp.float8_e4m3fn), jnp.full((n, k // 32), 127, jnp.uint8))


def fake_ptx(*names: str) -> str:
    """A PTX module's shape with empty entries ``names`` (what ``cuda_gemv.entry_ptx`` cuts one from)."""
    return "//\n.version 8.1\n" + "".join(f".visible .entry {name}(\n)\n{{\n}}\n" for name in names)


def launch_of(fn, *args):
    """The one PTX launch ``fn(*args)`` traces, and the traced output's shape."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    return launch.params, jaxpr.outvars[0].aval.shape


def bulk_names() -> set[str]:
    return {f"mxfp8_gemv_bulk_r{r}_s{s}_{dt}" for r, s in probe.KERNELS for dt in ("bf16", "f32")}


def test_a_ring_configuration_fits_when_its_stages_fit_the_sm_and_its_rows_divide_n():
    cfg = probe.Bulk(4, 2, 4)
    assert cfg.smem(4096) == 2 * 4 * (4096 + 128)
    assert cfg.fits(14336, 4096) and not cfg.fits(14334, 4096)
    assert not probe.Bulk(4, 6, 4).fits(14336, 4096)  # 4 CTAs of 6 stages: more than an SM's shared memory
    assert not probe.Bulk(4, 2, 4).fits(4096, 14336)  # 4 CTAs of 896 threads: more than an SM's threads
    assert not probe.Bulk(4, 2, 2).fits(14336, 2048)  # 256 threads an SM: fewer than 16 warps
    for n, k in probe.GEMV_SHAPES:
        assert any(probe.Bulk(*c).fits(n, k) for c in probe.CONFIGS)


@pytest.mark.parametrize("out_dtype, suffix", [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")])
def test_the_bulk_kernel_launch_takes_its_ring_in_dynamic_shared_memory(out_dtype, suffix):
    cfg = probe.Bulk(4, 3, 4)
    params, shape = launch_of(
        lambda x, w: probe.bulk_gemv(x, w, cfg, fake_ptx(*bulk_names()), out_dtype),
        jnp.ones((1, 4096), jnp.bfloat16),
        weight(14336, 4096),
    )
    assert params["name"] == f"mxfp8_gemv_bulk_r4_s3_{suffix}" and params["smem"] == 3 * 4 * (4096 + 128)
    assert params["grid"] == (4 * 132, 1) and params["warps"] == 8 and shape == (1, 14336)


@pytest.mark.parametrize(
    "name, rows, per_sm, kernel, out_shape",
    [
        ("mxfp8_gemv_deep2_r2", 2, 4, "mxfp8_gemv_deep2_r2_bf16", (1, 14336)),
        ("mxfp8_stream_r4", 4, 4, "mxfp8_stream_r4", (256,)),
        ("mxfp8_empty", 4, 4, "mxfp8_empty", (256,)),
    ],
)
def test_the_stream_variants_take_the_librarys_launch(name, rows, per_sm, kernel, out_shape):
    params, shape = launch_of(
        lambda x, w: probe.variant(x, w, name, rows, per_sm, fake_ptx(kernel)),
        jnp.ones((1, 4096), jnp.bfloat16),
        weight(14336, 4096),
    )
    assert params["name"] == kernel and params["smem"] == 0 and shape == out_shape
    assert params["grid"] == (min(14336 // rows, 132 * per_sm), 1) and params["warps"] == 8


def test_the_8_row_kernels_launch_one_or_two_ctas_an_sm():
    x, w = jnp.ones((8, 4096), jnp.bfloat16), weight(14336, 4096)
    params, shape = launch_of(
        lambda x, w: probe.mma8(x, w, "mxfp8_gemv_mma8_d1", fake_ptx("mxfp8_gemv_mma8_d1_bf16")), x, w
    )
    assert params["name"] == "mxfp8_gemv_mma8_d1_bf16" and params["warps"] == 32 and params["grid"] == (132, 1)
    assert shape == (8, 14336)
    b8 = fake_ptx("mxfp8_gemv_mma8_b8_d1_bf16")
    params, _ = launch_of(lambda x, w: probe.mma8(x, w, "mxfp8_gemv_mma8_b8_d1", b8), x, w)
    assert params["warps"] == 16 and params["grid"] == (2 * 132, 1)
    ring = fake_ptx("mxfp8_gemv_ring8_s3_f32")
    params, shape = launch_of(lambda x, w: probe.ring8(x, w, 3, 16, 1, ring, jnp.float32), x, w)
    assert params["name"] == "mxfp8_gemv_ring8_s3_f32" and params["warps"] == 16 and params["grid"] == (132, 1)
    assert params["smem"] == 3 * (8 * (4096 + 16) + 8 * 128) + 2 * 16 * 64 * 4 and shape == (8, 14336)


@pytest.mark.parametrize(
    "name, grid, warps",
    [
        ("mxfp8_gemv_wide16_b8", 132, 16),
        ("mxfp8_gemv_wide8_free_b4_loads", 132, 32),
        ("mxfp8_gemv_wide16_b8", 64, 16),
        ("mxfp8_gemv_wide8_x2_b8", 264, 16),
    ],
)
def test_the_wide_kernels_take_a_unit_of_their_rows_a_cta(name, grid, warps):
    n = 1024 if grid == 64 else 14336
    x, w = jnp.ones((8, 4096), jnp.bfloat16), weight(n, 4096)
    params, shape = launch_of(lambda x, w: probe.wide(x, w, name, fake_ptx(f"{name}_f32"), jnp.float32), x, w)
    assert params["name"] == f"{name}_f32" and params["warps"] == warps and params["grid"] == (grid, 1)
    assert shape == (8, n)


@needs_gpp
def test_every_kernel_the_probe_names_is_instantiated():
    assert bulk_names() | {"mxfp8_gemv_deep2_r2_bf16", "mxfp8_gemv_deep2_r4_f32"} <= cuda_kernel_names(
        probe.SOURCE, "mxfp8_gemv_"
    )
    streams = {name for name, _, _ in probe.PATTERN_VARIANTS} | {"mxfp8_empty"}
    assert streams <= cuda_kernel_names(probe.SOURCE, "mxfp8_")
    mma8 = cuda_kernel_names(probe.MMA8_SOURCE, "mxfp8_gemv_")
    for variant in probe.MMA8_VARIANTS + probe.WIDE_VARIANTS:
        stem = f"mxfp8_gemv_ring8_s{variant[0]}" if isinstance(variant, tuple) else variant
        assert {f"{stem}_bf16", f"{stem}_f32"} <= mma8


def test_the_xla_activation_pass_is_quantize_and_its_decode():
    x = jax.random.normal(jax.random.key(0), (3, 256), jnp.float32).astype(jnp.bfloat16)
    got = jax.jit(activation_probe.xla_decode_operand, static_argnums=1)(x, 8)
    want = np.zeros((8, 256), np.float32)
    want[:3] = np.asarray(dequantize(quantize(x), jnp.float32))
    np.testing.assert_array_equal(np.asarray(got, np.float32), want)
    xq = quantize(x)
    with hopper.interpret_mode():  # an MXArray still takes the shipped decode (Pallas, interpreted on CPU)
        np.testing.assert_array_equal(
            np.asarray(activation_probe.xla_decode_operand(xq), np.float32), np.asarray(dequantize(xq, jnp.float32))
        )


def test_the_activation_pass_is_swapped_inside_the_context_only():
    shipped = (hopper.quantize_activations, hopper.decode_operand)
    with activation_probe.activation_pass("xla"):
        assert hopper.quantize_activations is quantize
        assert hopper.decode_operand is activation_probe.xla_decode_operand
    assert (hopper.quantize_activations, hopper.decode_operand) == shipped
    with activation_probe.activation_pass("shipped"):
        assert (hopper.quantize_activations, hopper.decode_operand) == shipped
