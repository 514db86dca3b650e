"""The hopper backend's GEMV kernels for one to eight rows (mxfp8_xla.backends.cuda_gemv) on CPU: their shape rule,
the PTX they ship, the launch they trace, and which calls hopper.matmul routes to them (the kernels themselves run on
an SM90 GPU: benchmarks/cuda_gemv_probe.py checks them against emulation there)."""

import locale
import re
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import ADD_NORM_KERNELS, H100, cuda_kernel_names, needs_gpp

from mxfp8_xla import MXArray, quantize
from mxfp8_xla.__main__ import main as cli_main
from mxfp8_xla.backends import cuda_gemv, hopper, ptx_launch
from mxfp8_xla.backends.select import override_capability


def weight(n: int, k: int) -> MXArray:
    return MXArray(jnp.ones((n, k), jnp.float8_e4m3fn), jnp.full((n, k // 32), 127, jnp.uint8))


@pytest.mark.parametrize(
    "n, k", [(14336, 4096), (4096, 14336), (1024, 4096), (4096, 1536), (8, 512), (4, cuda_gemv.MAX_K[1])]
)
def test_config_gives_every_thread_one_chunk_of_every_row_in_units_of_four_rows(n, k):
    assert cuda_gemv.config(n, k) == cuda_gemv.GemvConfig(threads=k // 16, m=1, rows=4)


@pytest.mark.parametrize("n, k", [(14336, 4096), (28672, 4096), (1024, 4096), (8, 512), (4, cuda_gemv.MAX_K[2])])
def test_config_for_two_rows_is_the_same_split_up_to_k_8192(n, k):
    assert cuda_gemv.config(n, k, 2) == cuda_gemv.GemvConfig(threads=k // 16, m=2, rows=4)


@pytest.mark.parametrize("n, k", [(4096, 256), (4096, 4864), (4096, cuda_gemv.MAX_K[1] + 512), (4098, 4096)])
def test_config_refuses_what_the_kernel_cannot_take(n, k):
    assert cuda_gemv.config(n, k) is None


@pytest.mark.parametrize(
    "n, k, m",
    [(4096, 14336, 2), (4096, cuda_gemv.MAX_K[2] + 512, 2), (4096, 4096, 0), (14336, 4096, 9), (14336, 4096, 16)],
)
def test_config_refuses_more_rows_and_a_two_row_k_above_8192(n, k, m):
    assert cuda_gemv.config(n, k, m) is None


@pytest.mark.parametrize("m", cuda_gemv.MMA_ROWS)
@pytest.mark.parametrize("n, k", [(14336, 4096), (28672, 4096), (14336, 256), (cuda_gemv.MMA_MIN_N, 2048)])
def test_config_for_three_to_eight_rows_is_the_tensor_core_kernel_k_split_four_blocks_a_warp(n, k, m):
    assert cuda_gemv.config(n, k, m) == cuda_gemv.GemvConfig(threads=k // 4, m=m, rows=8)
    assert cuda_gemv.config(n, k, m).kernel(jnp.float32) == "mxfp8_gemv_mma_r8_f32"


@pytest.mark.parametrize(
    "n, k, why",
    [
        (512, 4096, "N below MMA_MIN_N, the smallest measured"),
        (4096, 14336, "K above 4096"),
        (14336, 8192, "K above 4096"),
        (14336, 4160, "K % 128"),
        (14340, 4096, "N % 8"),
        (cuda_gemv.MMA_MAX_N + 8, 4096, "N above the units a CTA marks"),
    ],
)
def test_config_refuses_three_to_eight_rows_where_the_tensor_core_kernel_does_not_run(n, k, why):
    assert all(cuda_gemv.config(n, k, m) is None for m in cuda_gemv.MMA_ROWS), why


@pytest.mark.parametrize("k", range(128, cuda_gemv.MMA_MAX_K + 1, 128))
def test_every_tensor_core_config_has_a_thread_for_each_of_a_units_outputs(k):
    for m in cuda_gemv.MMA_ROWS:
        cfg = cuda_gemv.config(14336, k, m)
        assert cfg is None or cfg.threads >= cuda_gemv.MMA_UNIT * m, (k, m)


def test_at_k_128_the_tensor_core_kernel_takes_only_the_rows_its_32_threads_can_sum():
    # A unit's 8 x m outputs are summed one a thread; at K = 128 (32 threads) five to eight rows left rows 4-7
    # unwritten on an H200 (results/gemv_pair_ab_h200.log), so those go to the Pallas path.
    assert [m for m in cuda_gemv.MMA_ROWS if cuda_gemv.config(14336, 128, m) is not None] == [3, 4]
    assert all(cuda_gemv.config(14336, 256, m) is not None for m in cuda_gemv.MMA_ROWS)


def test_grid_keeps_at_most_1024_threads_per_sm_and_one_cta_per_unit():
    assert cuda_gemv.config(14336, 4096).grid(14336, 132) == 4 * 132  # 3584 units of 4 rows; 4 CTAs of 256 an SM
    assert cuda_gemv.config(4096, 14336).grid(4096, 132) == 132  # 896 threads: one CTA an SM
    assert cuda_gemv.config(1024, 4096).grid(1024, 132) == 256  # fewer units than that: one CTA a unit
    assert cuda_gemv.config(4096, 512).grid(4096, 132) == 1024  # 32 threads: 32 CTAs an SM would be 4224


def test_the_tensor_core_grid_keeps_at_most_1024_threads_per_sm():  # 64 registers a thread
    assert cuda_gemv.config(14336, 4096, 8).grid(14336, 132) == 132  # 1024 threads: one CTA an SM
    assert cuda_gemv.config(28672, 2048, 4).grid(28672, 132) == 2 * 132
    assert cuda_gemv.config(14336, 128, 3).grid(14336, 132) == 14336 // 8  # 32 threads: fewer units than 32 an SM


def test_the_two_row_grid_keeps_at_most_512_threads_per_sm():  # 95-100 registers a thread
    assert cuda_gemv.config(14336, 4096, 2).grid(14336, 132) == 2 * 132  # 2 CTAs of 256 an SM, as the probe ran
    assert cuda_gemv.config(4096, 8192, 2).grid(4096, 132) == 132  # 512 threads: one CTA an SM
    assert cuda_gemv.config(28672, 512, 2).grid(28672, 132) == 16 * 132  # 32 threads: 16 CTAs an SM


def test_the_shipped_ptx_has_every_kernel_the_rule_names_and_every_cuda_12_driver_reads_it():
    ptx = cuda_gemv.PTX.read_text()
    assert re.search(r"^\.version 8\.1$", ptx, re.M) and re.search(r"^\.target sm_90$", ptx, re.M)
    entries = set(re.findall(r"\.visible \.entry (\w+)\(", ptx))
    names = {
        cuda_gemv.config(n, k, m).kernel(dtype)
        for n in (1024, 4096)
        for k in (1024, 2048)
        for m in (1, 2)
        for dtype in (jnp.bfloat16, jnp.float32)
    }
    names |= {
        cuda_gemv.config(4096, 4096).kernel(dtype, x_dtype=x_dtype, norm_dtype=norm_dtype)
        for dtype in (jnp.bfloat16, jnp.float32)
        for x_dtype in cuda_gemv.ADD_NORM_DTYPES
        for norm_dtype in cuda_gemv.ADD_NORM_DTYPES
    }
    names |= {
        cuda_gemv.config(n, 2048, m).kernel(dtype, x_dtype=jnp.float32)
        for n in (1024, 14336)
        for m in (1, 2, *cuda_gemv.MMA_ROWS)
        for dtype in (jnp.bfloat16, jnp.float32)
    }
    names |= {
        cuda_gemv.config(14336, 4096, m).kernel(dtype)
        for m in cuda_gemv.MMA_ROWS
        for dtype in (jnp.bfloat16, jnp.float32)
    }
    assert names == entries


@needs_gpp
def test_the_shipped_ptx_has_exactly_the_sources_library_instantiations():
    shipped = set(re.findall(r"\.visible \.entry (\w+)\(", cuda_gemv.PTX.read_text()))
    assert cuda_kernel_names(cuda_gemv.SOURCE, "mxfp8_gemv_") == shipped


def test_the_shipped_ptx_is_the_source_compiled():
    """Rebuilt from gemv.cu by the NVRTC the test extra pins (12.1.105, the one gemv.ptx was built with), byte for
    byte: rebuild with ``python -m mxfp8_xla build-ptx`` after editing gemv.cu."""
    try:
        rebuilt = cuda_gemv.build_ptx()
    except (RuntimeError, OSError) as e:  # no nvidia-cuda-nvrtc-cu12 wheel
        pytest.skip(f"NVRTC unavailable: {e}")
    assert cuda_gemv.nvrtc_version() == (12, 1)
    assert rebuilt == cuda_gemv.PTX.read_text()


def test_the_build_ptx_command_writes_the_shipped_ptx(tmp_path, monkeypatch, capsys):
    try:
        cuda_gemv.nvrtc_version()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"NVRTC unavailable: {e}")
    shipped = cuda_gemv.PTX.read_text()
    monkeypatch.setattr(cuda_gemv, "PTX", tmp_path / "gemv.ptx")
    assert cli_main(["build-ptx"]) == 0
    assert (tmp_path / "gemv.ptx").read_text() == shipped
    assert capsys.readouterr().out == f"wrote {tmp_path / 'gemv.ptx'}\n"


def test_a_source_that_does_not_compile_raises_with_nvrtcs_log(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text("__global__ void k() { undefined_name(); }\n")
    try:
        cuda_gemv.nvrtc_version()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"NVRTC unavailable: {e}")
    with pytest.raises(RuntimeError, match=r'could not compile bad.cu:\n.*identifier "undefined_name" is undefined'):
        cuda_gemv.build_ptx(bad)


def test_building_the_ptx_keeps_pythons_default_text_encoding():
    """NVRTC's compile leaves its thread on the C locale; after build_ptx files still open as UTF-8 by default."""
    before = locale.getpreferredencoding(False)
    try:
        cuda_gemv.build_ptx()
    except (RuntimeError, OSError) as e:  # no nvidia-cuda-nvrtc-cu12 wheel
        pytest.skip(f"NVRTC unavailable: {e}")
    assert locale.getpreferredencoding(False) == before


def ptxas() -> str | None:
    """ptxas from the test extra's ``nvidia-cuda-nvcc-cu12`` wheel, else from PATH."""
    try:
        import nvidia.cuda_nvcc
    except ImportError:
        return shutil.which("ptxas")
    exe = Path(list(nvidia.cuda_nvcc.__path__)[0]) / "bin" / "ptxas"
    return str(exe) if exe.exists() else shutil.which("ptxas")


def test_no_kernel_spills_and_each_fits_the_threads_its_grid_packs_an_sm(tmp_path):
    """ptxas (sm_90, on CPU) on the shipped PTX: no stack frame or spills, and registers x the threads
    ``GemvConfig.grid`` packs an SM within the 65536 an SM has (a spill or a wider kernel would cost speed silently;
    the device's driver compiles the PTX itself, usually to the same)."""
    exe = ptxas() or pytest.skip("no ptxas (the test extra's nvidia-cuda-nvcc-cu12)")
    log = subprocess.run(
        [exe, "-arch=sm_90", "-v", str(cuda_gemv.PTX), "-o", str(tmp_path / "gemv.cubin")],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    kernels = re.findall(
        r"Compiling entry function '(\w+)'.*?(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
        r".*?Used (\d+) registers",
        log,
        re.S,
    )
    assert {name for name, *_ in kernels} == set(re.findall(r"\.visible \.entry (\w+)\(", cuda_gemv.PTX.read_text()))
    for name, stack, stores, loads, registers in kernels:
        m = cuda_gemv.MMA_ROWS.start if "_mma_" in name else 2 if "_m2_" in name else 1
        assert (int(stack), int(stores), int(loads)) == (0, 0, 0), name
        assert int(registers) * cuda_gemv.THREADS_PER_SM[m] <= 65536, (name, registers)


def test_entry_ptx_keeps_the_header_and_one_entry():
    ptx = ".version 8.1\n.target sm_90\n.extern .shared .b8 xs[];\n\n"
    ptx += ".visible .entry a_bf16(\n.param .u64 p)\n{ ret; }\n\n.visible .entry a_bf16_x(\n.param .u64 p)\n{ trap; }\n"
    one = cuda_gemv.entry_ptx(ptx, "a_bf16")
    assert one.startswith(".version 8.1") and ".extern .shared" in one
    assert "a_bf16(" in one and "a_bf16_x" not in one and "trap" not in one
    whole = cuda_gemv.PTX.read_text()
    name = cuda_gemv.config(4096, 4096).kernel(jnp.bfloat16)
    assert cuda_gemv.entry_ptx(whole, name).count(".visible .entry") == 1


@pytest.mark.parametrize(
    "out_dtype, kernel_dtype", [(jnp.bfloat16, jnp.bfloat16), (jnp.float32, jnp.float32), (jnp.float16, jnp.float32)]
)
def test_matmul_rows_is_one_launch_and_rounds_other_dtypes_from_float32(out_dtype, kernel_dtype):
    x = jnp.ones((1, 1, 14336), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda x, w: cuda_gemv.matmul_rows(x, w, out_dtype))(x, weight(4096, 14336)).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    cfg = cuda_gemv.config(4096, 14336)
    suffix = "bf16" if kernel_dtype == jnp.bfloat16 else "f32"
    assert launch.params["name"] == cfg.kernel(kernel_dtype) == f"mxfp8_gemv_split_c1_r4_{suffix}"
    assert launch.params["grid"] == (cuda_gemv.DEFAULT_SMS, 1) and launch.params["warps"] == 14336 // 16 // 32
    assert launch.params["smem"] == 0 and launch.params["outputs"] == (((1, 4096), jnp.dtype(kernel_dtype)),)
    assert launch.params["ptx"].count(".visible .entry") == 1
    assert jaxpr.outvars[0].aval.shape == (1, 1, 4096) and jaxpr.outvars[0].aval.dtype == out_dtype


@pytest.mark.parametrize("shape", [(2, 4096), (2, 1, 4096), (1, 2, 4096)])
def test_two_rows_are_one_launch_of_the_two_row_kernel(shape):
    jaxpr = jax.make_jaxpr(lambda x, w: cuda_gemv.matmul_rows(x, w, jnp.bfloat16))(
        jnp.ones(shape, jnp.bfloat16), weight(14336, 4096)
    ).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert launch.params["name"] == "mxfp8_gemv_split_c1_r4_m2_bf16"
    assert launch.params["grid"] == (2 * cuda_gemv.DEFAULT_SMS, 1) and launch.params["warps"] == 4096 // 16 // 32
    assert launch.params["outputs"][0][0] == (2, 14336) and launch.params["ptx"].count(".visible .entry") == 1
    assert jaxpr.outvars[0].aval.shape == (*shape[:-1], 14336)


@pytest.mark.parametrize("shape, m", [((8, 4096), 8), ((3, 1, 4096), 3), ((1, 5, 4096), 5)])
def test_three_to_eight_rows_are_one_launch_of_the_tensor_core_kernel(shape, m):
    jaxpr = jax.make_jaxpr(lambda x, w: cuda_gemv.matmul_rows(x, w, jnp.float16))(
        jnp.ones(shape, jnp.bfloat16), weight(14336, 4096)
    ).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert launch.params["name"] == "mxfp8_gemv_mma_r8_f32" and launch.params["smem"] == 0
    assert launch.params["grid"] == (cuda_gemv.DEFAULT_SMS, 1) and launch.params["warps"] == 4096 // 4 // 32
    assert launch.params["outputs"] == (((m, 14336), jnp.dtype(jnp.float32)),)
    assert jaxpr.outvars[0].aval.shape == (*shape[:-1], 14336) and jaxpr.outvars[0].aval.dtype == jnp.float16


@pytest.mark.parametrize(
    "x, n, k, why",
    [
        (jnp.ones((3, 4096), jnp.bfloat16), 512, 4096, "three rows of a narrow weight"),
        (jnp.ones((9, 4096), jnp.bfloat16), 14336, 4096, "nine rows"),
        (jnp.ones((8, 14336), jnp.bfloat16), 4096, 14336, "eight rows at K 14336"),
        (jnp.ones((2, 14336), jnp.bfloat16), 4096, 14336, "two rows at K 14336"),
        (jnp.ones((1, 4096), jnp.int8), 1024, 4096, "int8"),
        (jnp.ones((1, 4864), jnp.bfloat16), 1024, 4864, "K % 512"),
        (jnp.ones((1, 4096), jnp.bfloat16), 1022, 4096, "N % 4"),
    ],
)
def test_matmul_rows_refuses_what_it_cannot_take_and_says_what_it_needs(x, n, k, why):
    assert not cuda_gemv.serves(x, weight(n, k)), why
    with pytest.raises(ValueError, match=r"GEMV kernel: cannot take x .* \(it needs one or two bfloat16, float16 or"):
        cuda_gemv.matmul_rows(x, weight(n, k), jnp.bfloat16)


def test_an_eager_launch_is_compiled_like_a_jitted_one():
    """Outside jit the launch goes to XLA as jax's own primitives do (on CPU its lowering then refuses the platform);
    it had no eager rule before the twenty-fifth session ("Evaluation rule for 'mxfp8_ptx_kernel' not
    implemented")."""
    with pytest.raises(NotImplementedError, match="MLIR translation rule for primitive 'mxfp8_ptx_kernel' not found"):
        cuda_gemv.matmul_rows(jnp.ones((1, 4096), jnp.bfloat16), weight(1024, 4096), jnp.bfloat16)


def test_an_mxarray_row_is_not_served():
    assert not cuda_gemv.serves(quantize(jnp.ones((1, 4096), jnp.bfloat16)), weight(1024, 4096))


def hopper_launches(x, w) -> list[str]:
    with override_capability(H100):
        return ptx_launch.traced_launches(lambda x: hopper.matmul(x, w, jnp.bfloat16), x)


@pytest.mark.parametrize("shape", [(1, 4096), (1, 1, 4096), (4096,)])
def test_hopper_sends_one_raw_bf16_row_to_the_kernel(monkeypatch, shape):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert hopper_launches(jnp.ones(shape, jnp.bfloat16), weight(14336, 4096)) == ["mxfp8_gemv_split_c1_r4_bf16"]


@pytest.mark.parametrize("shape", [(2, 4096), (1, 2, 4096)])
def test_hopper_sends_two_raw_bf16_rows_to_the_two_row_kernel(monkeypatch, shape):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert hopper_launches(jnp.ones(shape, jnp.bfloat16), weight(14336, 4096)) == ["mxfp8_gemv_split_c1_r4_m2_bf16"]


def test_hopper_keeps_two_rows_at_k_14336_on_its_pallas_kernels(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert not hopper_launches(jnp.ones((2, 14336), jnp.bfloat16), weight(4096, 14336))


@pytest.mark.parametrize("shape", [(3, 4096), (8, 4096), (2, 4, 4096)])
def test_hopper_sends_three_to_eight_raw_bf16_rows_to_the_tensor_core_kernel(monkeypatch, shape):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert hopper_launches(jnp.ones(shape, jnp.bfloat16), weight(14336, 4096)) == ["mxfp8_gemv_mma_r8_bf16"]


@pytest.mark.parametrize("n, k", [(512, 4096), (4096, 14336)])
def test_hopper_keeps_eight_rows_of_other_weights_on_its_pallas_kernels(monkeypatch, n, k):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert not hopper_launches(jnp.ones((8, k), jnp.bfloat16), weight(n, k))


@pytest.mark.parametrize(
    "x", [jnp.ones((9, 4096), jnp.bfloat16), quantize(jnp.ones((1, 4096)))], ids=["nine rows", "quantized row"]
)
def test_hopper_keeps_every_other_activation_on_its_pallas_kernels(monkeypatch, x):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert not hopper_launches(x, weight(14336, 4096))


@pytest.mark.parametrize(
    "rows, kernel", [(1, "mxfp8_gemv_split_c1_r4_xf32_bf16"), (2, "mxfp8_gemv_split_c1_r4_m2_xf32_bf16"),
                     (8, "mxfp8_gemv_mma_r8_xf32_bf16")],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_hopper_sends_float32_and_float16_rows_to_the_float32_row_kernels(monkeypatch, rows, kernel, dtype):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert hopper_launches(jnp.ones((rows, 4096), dtype), weight(14336, 4096)) == [kernel]


def test_float16_rows_reach_the_kernel_widened_to_float32_and_float32_rows_as_they_are():
    """float16 -> float32 is exact, so the kernel quantizes the same values emulation does; float32 rows are not
    rounded to bf16 (that would round twice) nor copied."""
    for dtype, converts in ((jnp.float16, 1), (jnp.float32, 0)):
        jaxpr = jax.make_jaxpr(lambda x, w: cuda_gemv.matmul_rows(x, w, jnp.float32))(
            jnp.ones((2, 4096), dtype), weight(14336, 4096)
        ).jaxpr
        (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
        assert launch.invars[2].aval.dtype == jnp.float32
        widened = [e for e in jaxpr.eqns if e.primitive is jax.lax.convert_element_type_p]
        assert len(widened) == converts
        assert all(e.params["new_dtype"] == jnp.float32 for e in widened)


@pytest.mark.parametrize("choice", ["pallas", "triton", "mosaic"])
def test_the_environment_variable_can_keep_one_row_on_the_pallas_kernels(monkeypatch, choice):
    monkeypatch.setenv(hopper.SMALL_M_KERNEL_ENV, choice)
    assert not hopper_launches(jnp.ones((1, 4096), jnp.bfloat16), weight(14336, 4096))


def test_the_cpu_interpreter_never_takes_the_kernel(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    with hopper.interpret_mode():
        assert not hopper_launches(jnp.ones((1, 4096), jnp.bfloat16), weight(14336, 4096))


@pytest.mark.parametrize(
    "n, rows, launches",
    [
        (14336, 8, ["mxfp8_gemv_mma_r8_bf16"]),
        (14336, 9, []),
        (6144, 8, ["mxfp8_gemv_mma_r8_bf16"]),
        (512, 8, []),
        (6144, 2, ["mxfp8_gemv_split_c1_r4_m2_bf16"]),
    ],
)
def test_under_vmap_the_mapped_rows_become_more_rows_of_one_product(monkeypatch, n, rows, launches):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    w = weight(n, 4096)
    xs = jnp.ones((rows, 1, 4096), jnp.bfloat16)
    with override_capability(H100):
        per_row = jax.vmap(lambda x: hopper.matmul(x, w, jnp.bfloat16))
        assert ptx_launch.traced_launches(per_row, xs) == launches  # one launch, or the Pallas kernels
        assert jax.eval_shape(per_row, xs).shape == (rows, 1, n)


def test_under_vmap_over_the_weight_each_product_takes_the_pallas_kernels(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    w = weight(14336, 4096)
    xs = jnp.ones((8, 1, 4096), jnp.bfloat16)
    with override_capability(H100):
        ws = MXArray(jnp.stack([w.data] * 2), jnp.stack([w.scale] * 2))
        per_weight = jax.vmap(lambda x, d, s: hopper.matmul(x, MXArray(d, s), jnp.bfloat16))
        assert not ptx_launch.traced_launches(per_weight, xs[:2], ws.data, ws.scale)
        assert jax.eval_shape(per_weight, xs[:2], ws.data, ws.scale).shape == (2, 1, 14336)


@pytest.mark.parametrize("out_dtype, kernel_dtype", [(jnp.bfloat16, jnp.bfloat16), (jnp.float16, jnp.float32)])
@pytest.mark.parametrize("x_dtype, norm_dtype, name", ADD_NORM_KERNELS)
def test_add_norm_rows_is_one_launch_with_the_product_and_the_sum(out_dtype, kernel_dtype, x_dtype, norm_dtype, name):
    x = jnp.ones((1, 1, 4096), x_dtype)
    norm_weight = jnp.ones((4096,), norm_dtype)
    fn = lambda x, d: cuda_gemv.add_norm_rows(x, d, norm_weight, 1e-5, weight(6144, 4096), out_dtype)  # noqa: E731
    jaxpr = jax.make_jaxpr(fn)(x, x)
    (launch,) = [e for e in jaxpr.jaxpr.eqns if e.primitive is ptx_launch._launch]
    suffix = "bf16" if kernel_dtype == jnp.bfloat16 else "f32"
    assert launch.params["name"] == f"mxfp8_gemv_split_c1_r4_{name}_{suffix}"
    assert launch.params["grid"] == (cuda_gemv.config(6144, 4096).grid(6144, cuda_gemv.DEFAULT_SMS), 1)
    assert launch.params["warps"] == 4096 // 16 // 32 and len(launch.invars) == 7
    assert [(v.aval.shape, v.aval.dtype) for v in launch.invars[2:5]] == [
        ((1, 4096), x_dtype),
        ((1, 4096), x_dtype),
        ((4096,), norm_dtype),
    ]
    assert launch.params["outputs"] == (((1, 6144), jnp.dtype(kernel_dtype)), ((1, 4096), jnp.dtype(x_dtype)))
    assert [(v.shape, v.dtype) for v in jaxpr.out_avals] == [((1, 1, 6144), out_dtype), ((1, 1, 4096), x_dtype)]


@pytest.mark.parametrize(
    "x, delta, norm_weight",
    [
        (jnp.ones((2, 4096), jnp.bfloat16), jnp.ones((2, 4096), jnp.bfloat16), jnp.ones((4096,), jnp.bfloat16)),
        (jnp.ones((1, 4096), jnp.bfloat16), jnp.ones((1, 4096), jnp.float32), jnp.ones((4096,), jnp.bfloat16)),
        (jnp.ones((1, 4096), jnp.float32), jnp.ones((1, 4096), jnp.bfloat16), jnp.ones((4096,), jnp.float32)),
        (jnp.ones((1, 4000), jnp.bfloat16), jnp.ones((1, 4000), jnp.bfloat16), jnp.ones((4000,), jnp.bfloat16)),
        (jnp.ones((1, 4096), jnp.float16), jnp.ones((1, 4096), jnp.float16), jnp.ones((4096,), jnp.float32)),
        (jnp.ones((1, 4096), jnp.float32), jnp.ones((1, 4096), jnp.float32), jnp.ones((4096,), jnp.float16)),
        (jnp.ones((1, 4096), jnp.bfloat16), jnp.ones((1, 4096), jnp.bfloat16), jnp.ones((2048,), jnp.bfloat16)),
    ],
    ids=["two rows", "float32 delta", "bf16 delta", "K % 512", "float16 x", "float16 norm weight", "short norm weight"],
)
def test_add_norm_rows_refuses_what_its_kernel_does_not_take(x, delta, norm_weight):
    w = weight(64, x.shape[-1])
    assert not cuda_gemv.serves_add_norm(x, delta, norm_weight, w)
    with pytest.raises(
        ValueError, match=r"add-and-norm GEMV kernel: cannot take x .* \(it needs one bfloat16 or float32 row"
    ):
        cuda_gemv.add_norm_rows(x, delta, norm_weight, 1e-5, w, jnp.bfloat16)
