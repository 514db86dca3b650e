"""Backends: torch reference vs emulation, selection rules, forced-backend errors, FlashInfer arguments."""

import dataclasses
import importlib
import logging
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import subprocess_env
from flashinfer_checks import check_mm_mxfp8, fake_mm_mxfp8, mxfp8_swizzled_scale_len_128x4

import mxfp8_xla as mx
from mxfp8_xla.backends import (
    BACKEND_ENV,
    BACKENDS,
    BackendUnavailableError,
    Capability,
    backend_problems,
    hopper_mosaic,
    override_capability,
    ptx_launch,
    select_backend,
)
from mxfp8_xla.backends import flashinfer as fi_backend
from mxfp8_xla.backends import select as select_mod
from mxfp8_xla.backends.select import SELECTABLE
from mxfp8_xla.flax import MXFP8Dense, swizzle_params
from mxfp8_xla.interop import CALL_COUNTS

# Eager jnp ops compile one by one (seconds per shape on a small CPU): jit the helpers.
quantize = jax.jit(mx.quantize)
dequantize = jax.jit(mx.dequantize)
swizzle = jax.jit(mx.swizzle_scales)


def matmul(x, w, backend="emulation", out_dtype=jnp.bfloat16, name=None):
    """``mx.mxfp8_matmul`` under jit (the backend choice happens while tracing)."""
    f = jax.jit(lambda x, w: mx.mxfp8_matmul(x, w, out_dtype=out_dtype, backend=backend, name=name))
    return f(x, w)


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def _data(m_shape, n, k, seed=0, spread=4.0):
    """x with per-block magnitudes over a few binades (exercises many scale bytes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*m_shape, k)).astype(np.float32)
    x *= np.exp2(rng.integers(-spread, spread + 1, size=(*m_shape, k // 32, 1))).repeat(32, -1).reshape(x.shape)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    return jnp.asarray(x), quantize(jnp.asarray(w))


def _f32_bound(xq, wq):
    """Any float32 summation order: |err| <= K * 2**-23 * (|x| @ |w|.T) (a gamma_K-style bound)."""
    xd = np.abs(np.asarray(dequantize(xq), np.float64))
    wd = np.abs(np.asarray(dequantize(wq), np.float64))
    k = xd.shape[-1]
    return k * 2.0**-23 * (xd @ wd.T)


# ----------------------------------------------------------------------------- torch == emulation


@pytest.mark.parametrize("lead", [(8,), (2, 3), (1,)], ids=str)
@pytest.mark.parametrize("k", [32, 256])
def test_torch_equals_emulation_f32(lead, k):
    x, w = _data(lead, 48, k, seed=k)
    xq = quantize(x)
    emu = matmul(xq, w, "emulation", jnp.float32)
    ref = matmul(xq, w, "torch", jnp.float32)
    assert ref.shape == (*lead, 48) and ref.dtype == jnp.float32
    err = np.abs(np.asarray(ref, np.float64) - np.asarray(emu, np.float64))
    assert np.all(err <= _f32_bound(xq, w)), err.max()


def test_torch_equals_emulation_bf16_within_one_ulp():
    x, w = _data((16,), 128, 256, seed=3)
    emu = np.asarray(matmul(x, w, "emulation"), np.float32)
    ref = np.asarray(matmul(x, w, "torch"), np.float32)
    # Both round a float32 result to bfloat16 once; float32 results may straddle a rounding boundary.
    ulp = np.exp2(np.floor(np.log2(np.maximum(np.abs(emu), 1e-30))) - 7)
    assert np.all(np.abs(ref - emu) <= ulp)


def test_torch_backend_nan_blocks_and_zeros():
    x = np.zeros((4, 64), np.float32)
    x[0, 3] = np.nan  # block 0 of row 0 -> scale 255 -> whole output row NaN
    x[1, 40] = 2.0
    w = quantize(jnp.asarray(np.random.default_rng(0).standard_normal((128, 64)), jnp.float32))
    emu = matmul(jnp.asarray(x), w, "emulation", jnp.float32)
    ref = matmul(jnp.asarray(x), w, "torch", jnp.float32)
    np.testing.assert_array_equal(np.isnan(ref), np.isnan(emu))
    assert np.isnan(ref[0]).all() and not np.isnan(ref[1:]).any()
    np.testing.assert_allclose(ref[1:], emu[1:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ref[2:], 0.0)


def test_torch_backend_vmap_and_jit_rank3():
    x, w = _data((3, 2, 5), 64, 128, seed=11)
    f = jax.jit(jax.vmap(lambda x: mx.mxfp8_matmul(x, w, out_dtype=jnp.float32, backend="torch", name="v")))
    before = CALL_COUNTS["torch:v"]
    out = f(x)
    assert CALL_COUNTS["torch:v"] - before == 1  # vmapped rows flattened into one bridged call
    emu = matmul(x, w, "emulation", jnp.float32)
    assert out.shape == (3, 2, 5, 64)
    xq = quantize(x)
    assert np.all(np.abs(np.asarray(out, np.float64) - np.asarray(emu, np.float64)) <= _f32_bound(xq, w))


def test_torch_backend_empty_rows():
    _, w = _data((1,), 64, 64)
    out = matmul(jnp.zeros((0, 64)), w, "torch")
    assert out.shape == (0, 64)


def test_torch_backend_k_zero_gives_zeros_as_emulation():
    w = quantize(jnp.ones((8, 0)))
    for backend in ("torch", "emulation"):
        out = matmul(jnp.ones((4, 0)), w, backend, jnp.float32)
        assert out.shape == (4, 8) and not np.any(np.asarray(out))


# ----------------------------------------------------------------------------- selection

CPU = Capability(platform="cpu", device_kind="cpu", torch_version="2.13.0")
H100 = Capability(
    platform="gpu",
    device_kind="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    gpu_vendor="cuda",
    torch_version="2.11.0",
    torch_cuda=True,
    flashinfer_version="0.6.0",
)
B200 = dataclasses.replace(H100, device_kind="NVIDIA B200", compute_capability=(10, 0))
B200_NO_FI = dataclasses.replace(B200, flashinfer_version=None, flashinfer_error="ModuleNotFoundError: flashinfer")
B200_NO_TORCH = dataclasses.replace(B200, torch_version=None, torch_cuda=False, torch_error="ImportError: torch")
RTX5090 = dataclasses.replace(B200, device_kind="NVIDIA GeForce RTX 5090", compute_capability=(12, 0))
H100_NO_PALLAS_TRITON = dataclasses.replace(
    H100,
    hopper_import_error="jax.experimental.pallas.triton: ModuleNotFoundError: No module named "
    "'jax.experimental.pallas.triton'",
)
TPU = Capability(platform="tpu", device_kind="TPU v5e", torch_version="2.13.0")

BF16, F32 = jnp.bfloat16, jnp.float32

# (capability, n, k, out_dtype, expected "auto" choice, substring of the reason)
AUTO_TABLE = [
    (CPU, 4096, 4096, BF16, "emulation", "the device is cpu"),
    (TPU, 4096, 4096, BF16, "emulation", "the device is tpu"),
    (H100, 4096, 4096, BF16, "hopper", "SM90; FlashInfer mm_mxfp8 needs SM100+"),
    (H100, 4096, 4096, F32, "hopper", "SM90 GPU, hopper kernel fits"),
    (H100, 4096, 4000, BF16, "hopper", "SM90 GPU, hopper kernel fits"),  # K off the 128-wide tiles: smaller ones
    (H100, 4000, 4096, BF16, "hopper", "SM90 GPU, hopper kernel fits"),  # N off the 64-wide tiles: a masked last one
    (H100, 4096, 4010, BF16, "emulation", "K=4010 is not a multiple of 32 (the MXFP8 block)"),
    (H100_NO_PALLAS_TRITON, 4096, 4096, BF16, "emulation", "lacks a module the hopper backend's kernels are built on"),
    (B200_NO_FI, 4096, 4096, BF16, "emulation", "is SM100; the hopper kernel is built and measured for SM90 only"),
    (B200, 4096, 4096, BF16, "flashinfer", "shape fits"),
    (B200, 128, 128, BF16, "flashinfer", "shape fits"),
    (B200, 4096, 4096, jnp.float16, "flashinfer", "shape fits"),
    (B200, 4096, 4096, F32, "emulation", "out_dtype float32"),
    (B200, 64, 4096, BF16, "emulation", "N=64 < 128"),
    (B200, 4096, 96, BF16, "emulation", "K=96 < 128"),
    (B200, 4096, 200, BF16, "emulation", "K=200 is not a multiple of 32"),
    (B200_NO_FI, 4096, 4096, BF16, "emulation", "flashinfer does not import"),
    (B200_NO_TORCH, 4096, 4096, BF16, "emulation", "torch does not import"),
    (RTX5090, 4096, 4096, BF16, "flashinfer", "shape fits"),
    (RTX5090, 144, 4096, BF16, "emulation", "N=144 is not a multiple of 32"),
]


@pytest.mark.parametrize(("cap", "n", "k", "out_dtype", "choice", "why"), AUTO_TABLE)
def test_auto_choice_table(cap, n, k, out_dtype, choice, why, caplog):
    with caplog.at_level(logging.INFO, logger="mxfp8_xla.backends"), override_capability(cap):
        assert select_backend("auto", n=n, k=k, out_dtype=out_dtype, name="blk.0.mlp") == choice
        select_backend(None, n=n, k=k, out_dtype=out_dtype, name="blk.0.mlp")  # same layer: no 2nd line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "'blk.0.mlp'" in lines[0] and f"-> '{choice}'" in lines[0] and why in lines[0]
    # Emulation on a GPU is the slow path, so that fallback is a warning; every other choice is info.
    slow = choice == "emulation" and cap.platform == "gpu"
    assert caplog.records[0].levelno == (logging.WARNING if slow else logging.INFO)


def test_auto_logs_once_per_layer(caplog):
    with caplog.at_level(logging.INFO, logger="mxfp8_xla.backends"), override_capability(H100):
        for name in ("q_proj", "k_proj", "q_proj", "q_proj"):
            select_backend("auto", n=4096, k=4096, name=name)
    assert len(caplog.records) == 2


@pytest.mark.parametrize(
    ("cap", "backend", "n", "k", "reason"),
    [
        (H100, "flashinfer", 4096, 4096, "SM90; FlashInfer mm_mxfp8 needs SM100+"),
        (CPU, "flashinfer", 4096, 4096, "the device is cpu"),
        (B200, "flashinfer", 4096, 64, "K=64 < 128"),
        (B200_NO_FI, "flashinfer", 4096, 4096, "flashinfer does not import"),
        (B200_NO_TORCH, "torch", 4096, 4096, "torch does not import"),
        (dataclasses.replace(H100, torch_cuda=False), "torch", 4096, 4096, "has no CUDA device"),
        (TPU, "torch", 4096, 4096, "CPU and GPU only"),
        (CPU, "hopper", 4096, 4096, "the hopper kernel needs an NVIDIA SM90 GPU"),
        (B200, "hopper", 4096, 4096, "SM100; the hopper kernel is built and measured for SM90 only"),
        (H100, "hopper", 4096, 100, "K=100 is not a multiple of 32"),
        (
            dataclasses.replace(B200, compute_capability=None),
            "flashinfer",
            4096,
            4096,
            "the compute capability of NVIDIA B200 is unknown; mm_mxfp8 needs SM100+",
        ),
        (
            H100_NO_PALLAS_TRITON,
            "hopper",
            4096,
            4096,
            "lacks a module the hopper backend's kernels are built on (jax.experimental.pallas.triton",
        ),
    ],
)
def test_forced_backend_errors(cap, backend, n, k, reason):
    with override_capability(cap), pytest.raises(BackendUnavailableError) as e:
        select_backend(backend, n=n, k=k, name="layers.3.mlp.down_proj")
    msg = str(e.value)
    assert "layers.3.mlp.down_proj" in msg
    assert f"w [{n}, {k}]" in msg
    assert reason in msg
    assert f"backend={backend!r}" in msg


def test_forced_backends_that_can_serve():
    with override_capability(B200):
        assert select_backend("flashinfer", n=256, k=256) == "flashinfer"
        assert select_backend("torch", n=8, k=32) == "torch"
    with override_capability(H100):
        assert select_backend("emulation", n=8, k=32) == "emulation"
        assert backend_problems("torch", n=8, k=32) == []


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "flashinfer")
    with override_capability(H100), pytest.raises(BackendUnavailableError, match=f"{BACKEND_ENV}=flashinfer"):
        select_backend("auto", n=4096, k=4096, name="blk.1")
    # An explicit argument wins over the env var.
    with override_capability(H100):
        assert select_backend("emulation", n=4096, k=4096) == "emulation"
    monkeypatch.setenv(BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="is not a backend"):
        select_backend("auto", n=4096, k=4096)


def test_env_var_routes_auto_matmul_through_torch(monkeypatch):
    x, w = _data((4,), 64, 64)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    before = CALL_COUNTS["torch:envlayer"]
    out = matmul(x, w, "auto", jnp.float32, name="envlayer")
    assert CALL_COUNTS["torch:envlayer"] - before == 1
    np.testing.assert_allclose(out, matmul(x, w, "emulation", jnp.float32), rtol=1e-5, atol=1e-5)


def test_mxfp8_matmul_forced_flashinfer_fails_at_trace_time_on_cpu():
    x, w = _data((4,), 256, 256)
    f = jax.jit(lambda x: mx.mxfp8_matmul(x, w, backend="flashinfer", name="decoder.0.attn.o_proj"))
    with pytest.raises(BackendUnavailableError, match=r"decoder\.0\.attn\.o_proj.*the device is cpu"):
        f.lower(x)  # raised while tracing, before anything runs


def test_every_module_the_hopper_backend_needs_imports_here():
    # CI's jax has them all; a probe that reports one missing where it is not (as a first version of the probe did
    # on the H200, importing jax._src.lib.gpu_triton as a module, which it is not) would take the backend away
    assert select_mod._probe_hopper_imports() is None


@pytest.mark.parametrize(
    ("block", "reported"),
    [
        ("sys.modules['jax.experimental.pallas.triton'] = None", "jax.experimental.pallas.triton: "),
        ("sys.modules['jax.experimental.pallas.mosaic_gpu'] = None", "jax.experimental.pallas.mosaic_gpu: "),
        (  # an attribute of jax._src.lib, not an importable module
            "import jax._src.lib as lib; del lib.gpu_triton; sys.modules['jax._src.lib.gpu_triton'] = None",
            "jax's private modules behind jaxlib's PTX launcher: ",
        ),
    ],
    ids=["pallas_triton", "mosaic_gpu", "gpu_triton"],
)
def test_the_package_imports_and_emulates_without_a_hopper_module(tmp_path, block, reported):
    # jax 0.11 deprecates its Pallas Triton backend, and ptx_launch reaches jaxlib's launcher through private
    # modules: where a jax lacks one, only the hopper backend may go with it
    script = tmp_path / "no_hopper_module.py"
    script.write_text(
        "import sys\n"
        f"{block}  # any import of it now raises ImportError\n"
        "import jax.numpy as jnp\n"
        "import mxfp8_xla as mx\n"
        "from mxfp8_xla.backends.select import probe_capability\n"
        f"assert probe_capability().hopper_import_error.startswith({reported!r})\n"
        "w = mx.quantize(jnp.ones((64, 128)))\n"
        "assert float(mx.mxfp8_matmul(jnp.ones((2, 128)), w, out_dtype=jnp.float32, backend='auto')[0, 0]) == 128.0\n"
        "print('OK')\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr


def test_unknown_backend_names():
    with pytest.raises(ValueError, match="unknown MXFP8 backend"):
        select_backend("cuda", n=128, k=128)
    with pytest.raises(ValueError, match="unknown MXFP8 backend"):
        matmul(jnp.ones((2, 32)), quantize(jnp.ones((4, 32))), "cuda")
    assert ("auto", *BACKENDS) == SELECTABLE  # one list of names: the concrete backends, and "auto" to pick one


def test_auto_backend_on_cpu_is_emulation():
    x, w = _data((2, 3), 64, 64)
    np.testing.assert_array_equal(matmul(x, w, "auto", name="a"), matmul(x, w, "emulation"))


# ----------------------------------------------------------------------------- FlashInfer arguments


def _torch(a: jax.Array) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype == jnp.float8_e4m3fn:
        return torch.from_numpy(a.view(np.uint8).copy()).view(torch.float8_e4m3fn)
    return torch.from_numpy(a.copy())


def _prepared(m, n, k, seed=0):
    x, w = _data((m,), n, k, seed=seed)
    xq = quantize(x)
    wp = fi_backend.prepare_weight(w)
    a_q, a_sf = _torch(xq.data), _torch(swizzle(xq.scale))
    w_q, w_sf = _torch(wp.data), _torch(wp.scale_swizzled)
    return xq, w, (a_q, w_q, a_sf, w_sf)


def _real_flashinfer_check():
    try:
        from flashinfer.gemm import gemm_base
    except Exception:  # noqa: BLE001 - not installed in CI
        return None
    return getattr(gemm_base, "_check_mm_mxfp8_problem_size", None)


SHAPES = [(1, 128, 128), (130, 384, 160), (200, 256, 4096), (128, 1024, 512), (7, 640, 224)]


@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_flashinfer_arguments_layouts(m, n, k, out_dtype):
    _, _, (a_q, w_q, a_sf, w_sf) = _prepared(m, n, k)
    out = torch.empty((m, n), dtype=out_dtype)
    args, kwargs = fi_backend.flashinfer_arguments(a_q, w_q, a_sf, w_sf, out)
    a, b, a_descale, b_descale = args
    assert a is a_q and a.shape == (m, k) and a.stride() == (k, 1)
    # b: column-major [K, N], a transposed *view* of the [N, K] weight (no copy).
    assert b.shape == (k, n) and b.stride() == (1, k) and b.t().is_contiguous()
    assert b.data_ptr() == w_q.data_ptr()
    assert a_descale.shape == (mxfp8_swizzled_scale_len_128x4(m, k),) and a_descale.dtype == torch.uint8
    assert b_descale.shape == (mxfp8_swizzled_scale_len_128x4(n, k),) and b_descale.dtype == torch.uint8
    assert kwargs == {"out": out, "out_dtype": out_dtype, "use_8x4_sf_layout": False, "backend": "cutlass"}
    assert check_mm_mxfp8(*args, **{k_: v for k_, v in kwargs.items() if k_ != "backend"})
    real = _real_flashinfer_check()
    if real is not None:  # FlashInfer's own common check (imports on CPU when installed)
        assert real(*args, **kwargs)


def test_flashinfer_arguments_rejects():
    _, _, (a_q, w_q, a_sf, w_sf) = _prepared(130, 384, 160)
    out = torch.empty((130, 384), dtype=torch.bfloat16)
    fa = fi_backend.flashinfer_arguments
    cases = [
        ((a_q, w_q, a_sf[:-4], w_sf, out), "a_scale_sw has length"),
        ((a_q, w_q, a_sf, w_sf.reshape(-1, 4), out), "1-D 128x4 swizzled"),
        ((a_q.view(torch.uint8), w_q, a_sf, w_sf, out), "float8_e4m3fn"),
        ((a_q, w_q.t().contiguous().t(), a_sf, w_sf, out), "row-major contiguous \\[N, K\\]"),
        ((a_q, w_q, a_sf, w_sf, out.float()), "bfloat16 or float16"),
        ((a_q, w_q, a_sf, w_sf, out[:, :128]), "contiguous \\[130, 384\\]"),
        ((a_q[:, :96], w_q[:, :96], a_sf, w_sf, out), "K=96|n >= 128 and k >= 128"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            fa(*args)


def test_prepare_weight_refuses_what_is_not_a_2d_mxarray():
    for bad in (jnp.ones((128, 128)), quantize(jnp.ones((2, 128, 128)))):
        with pytest.raises(ValueError, match="prepare_weight expects a 2-D MXArray"):
            fi_backend.prepare_weight(bad)


def test_prepare_weight_scale_length_matches_flashinfer():
    for n, k in [(128, 128), (384, 160), (1000, 4096), (129, 224)]:
        w = quantize(jnp.ones((n, k)))
        wp = fi_backend.prepare_weight(w)
        assert wp.scale_swizzled.shape == (mxfp8_swizzled_scale_len_128x4(n, k),)
        assert wp.data is w.data
        assert mx.swizzled_scale_len(n, k // 32) == mxfp8_swizzled_scale_len_128x4(n, k)


@pytest.fixture
def fake_flashinfer(monkeypatch):
    """A CPU stand-in for the flashinfer module: validates like mm_mxfp8, computes in float64."""
    calls = []

    def mm_mxfp8(*args, **kwargs):
        calls.append((tuple(a.shape for a in args), kwargs["backend"]))
        return fake_mm_mxfp8(*args, **kwargs)

    module = types.SimpleNamespace(__version__="0.0-fake", mm_mxfp8=mm_mxfp8)
    monkeypatch.setitem(sys.modules, "flashinfer", module)
    with override_capability(dataclasses.replace(B200, flashinfer_version="0.0-fake")):
        yield calls


@pytest.mark.parametrize(("lead", "n", "k"), [((130,), 384, 160), ((2, 3), 256, 128), ((1,), 128, 512)])
def test_flashinfer_backend_end_to_end_with_cpu_model(fake_flashinfer, lead, n, k):
    """JAX quantize + swizzle -> bridge -> mm_mxfp8(a, w.t(), ...) reproduces the emulation result.

    The model reads the swizzled scales with FlashInfer's offset formula, so this also checks
    that the JAX-side swizzle is the layout mm_mxfp8 reads.
    """
    x, w = _data(lead, n, k, seed=n + k)
    out = np.asarray(matmul(x, w, "flashinfer", name="fi"), np.float32)
    emu = np.asarray(matmul(x, w, "emulation", jnp.float32), np.float32)
    assert out.shape == (*lead, n)
    ulp = np.exp2(np.floor(np.log2(np.maximum(np.abs(emu), 1e-30))) - 7)
    assert np.all(np.abs(out - emu) <= ulp)
    m = int(np.prod(lead))
    assert fake_flashinfer[-1] == (
        ((m, k), (k, n), (mxfp8_swizzled_scale_len_128x4(m, k),), (mxfp8_swizzled_scale_len_128x4(n, k),)),
        "cutlass",
    )


def test_flashinfer_backend_prepared_weight_and_vmap(fake_flashinfer):
    x, w = _data((4, 3), 256, 256, seed=5)
    wp = fi_backend.prepare_weight(w)
    f = jax.jit(jax.vmap(lambda x: fi_backend.matmul(mx.quantize(x), wp, jnp.dtype(jnp.bfloat16), name="pv")))
    out = np.asarray(f(x), np.float32)
    assert len(fake_flashinfer) == 1 and fake_flashinfer[0][0][0] == (
        12,
        256,
    )  # rows flattened before swizzle
    emu = np.asarray(matmul(x, w, "emulation", jnp.float32), np.float32)
    ulp = np.exp2(np.floor(np.log2(np.maximum(np.abs(emu), 1e-30))) - 7)
    assert np.all(np.abs(out - emu) <= ulp)


def test_flashinfer_backend_inside_a_shard_map_that_checks_varying_axes(fake_flashinfer):
    """Its bridge's output is typed as varying over x's axes: equal to the call outside, and refused as replicated."""
    x, w = _data((130,), 384, 160, seed=7)
    wp = fi_backend.prepare_weight(w)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    def product(x):
        y = mx.mxfp8_matmul(x, wp, backend="flashinfer", name="fi")
        assert jax.typeof(y).manual_axis_type.varying == {"data"}
        return y

    spec = jax.sharding.PartitionSpec("data")
    got = jax.jit(jax.shard_map(product, mesh=mesh, in_specs=spec, out_specs=spec))(x)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(matmul(x, wp, "flashinfer"), np.float32))
    with pytest.raises(ValueError, match="out_specs which require replication"):
        jax.shard_map(product, mesh=mesh, in_specs=spec, out_specs=jax.sharding.PartitionSpec())(x)


@pytest.mark.parametrize("kind", ["column", "row"])
def test_flashinfer_backend_in_the_tensor_parallel_helpers(fake_flashinfer, kind):
    """row_parallel asks a backend for float32 partial sums only where it writes them: mm_mxfp8's are bf16 (it
    refused the helper's float32 request before), added in float32 by the psum."""
    from mxfp8_xla import sharding as sh

    x, w = _data((8,), 256, 256, seed=9)
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    fn = sh.column_parallel if kind == "column" else sh.row_parallel
    out = np.asarray(fn(x, sh.shard_weight(w, mesh, kind), mesh, backend="flashinfer", name=kind), np.float32)
    emu = np.asarray(matmul(x, w, "emulation", jnp.float32), np.float32)
    ulp = np.exp2(np.floor(np.log2(np.maximum(np.abs(emu), 1e-30))) - 7)
    assert out.shape == (8, 256) and np.all(np.abs(out - emu) <= ulp)
    assert fake_flashinfer[-1][0][:2] == ((8, 256), (256, 256))


# ----------------------------------------------------------------------------- info


def test_info_reports_devices_versions_and_backends(capsys, monkeypatch):
    info_mod = importlib.import_module("mxfp8_xla.info")  # mxfp8_xla.info is also the function

    with override_capability(H100):
        report = info_mod.info()
    assert report["jax"] == jax.__version__ and report["torch"] == "2.11.0"
    assert report["devices"] and report["devices"][0]["platform"]
    assert report["backends"]["emulation"] == {"usable": True, "why_not": None}
    assert report["backends"]["torch"]["usable"] is True
    assert not report["backends"]["flashinfer"]["usable"]
    assert "SM90" in report["backends"]["flashinfer"]["why_not"][0]
    assert report["backends"]["hopper"] == {"usable": True, "why_not": None}
    assert report["auto_choice"]["backend"] == "hopper"
    assert report["hopper_one_row"]["kernel"] == "mxfp8_gemv_split_c1_r4_bf16"
    assert report["hopper_one_row"]["launcher_missing"] == ptx_launch.unavailable()
    blocks = hopper_mosaic.setmaxnreg_ignored()
    assert report["hopper_mosaic_weight_loads"].startswith(
        "block by block from 224 padded rows" if blocks else "whole tiles"
    )
    assert info_mod.main() == 0
    kept = {"pallas": "none (MXFP8_XLA_HOPPER_SMALL_M)", "cuda": "none: MXFP8_XLA_HOPPER_SMALL_M='cuda': expected"}
    for value, kernel in kept.items():
        monkeypatch.setenv("MXFP8_XLA_HOPPER_SMALL_M", value)
        with override_capability(H100):
            assert info_mod.info()["hopper_one_row"]["kernel"].startswith(kernel)
    out = capsys.readouterr().out
    assert "backends:" in out and "emulation  usable" in out and "jax:" in out
    assert info_mod.info()["flashinfer_shape_rules"] == "K % 32 == 0, K >= 128, N >= 128, out bfloat16/float16"
    # The misconfigurations it exists to diagnose are reported, not raised.
    monkeypatch.delenv("MXFP8_XLA_HOPPER_SMALL_M")
    for value, reported in (("foo", "none: MXFP8_XLA_BACKEND='foo' is not a backend"), ("hopper", "none: mxfp8_xla:")):
        monkeypatch.setenv(BACKEND_ENV, value)
        assert info_mod.info()["auto_choice"]["backend"].startswith(reported)
        assert info_mod.main() == 0


def test_mxfp8_matmul_takes_a_prepared_weight_on_every_backend(fake_flashinfer):
    """A FlashInferWeight runs on the flashinfer backend with no weight-scale swizzle in the program, and
    on the others with the swizzle undone (the same numbers as its MXArray)."""
    x, w = _data((4,), 256, 384, seed=3)
    wp = fi_backend.prepare_weight(w)
    for backend in ("emulation", "torch"):
        np.testing.assert_array_equal(matmul(x, wp, backend, jnp.float32), matmul(x, w, backend, jnp.float32))
    np.testing.assert_array_equal(matmul(x, wp, "flashinfer"), matmul(x, w, "flashinfer"))

    def transposes(weight):  # the swizzle is a pad and a 5-D transpose per scale matrix
        jaxpr = jax.make_jaxpr(lambda x, w: mx.mxfp8_matmul(x, w, backend="flashinfer"))(x, weight)
        return str(jaxpr).count("transpose[")

    assert transposes(w) == 2 and transposes(wp) == 1  # the activation's scales only


def test_a_prepared_weight_off_flashinfer_is_logged_once_per_layer(fake_flashinfer, caplog):
    """A FlashInferWeight on another backend costs an unswizzle every call: a warning on a GPU backend, info on
    emulation, once per (layer, shape, backend); nothing on flashinfer, which reads it as it is."""
    x, w = _data((4,), 256, 384, seed=3)
    wp = fi_backend.prepare_weight(w)
    with caplog.at_level(logging.INFO, logger="mxfp8_xla.backends"), override_capability(H100):
        for _ in range(2):
            jax.make_jaxpr(lambda x, w: mx.mxfp8_matmul(x, w, backend="hopper", name="up"))(x, wp)
            mx.mxfp8_matmul(x, wp, backend="emulation", name="up")
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO]
    assert all(
        "layer 'up'" in msg and "FlashInfer swizzle" in msg and f"({256 * 384 // 32} bytes)" in msg
        for _, msg in records
    )
    assert "backend 'hopper'" in records[0][1] and "backend 'emulation'" in records[1][1]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mxfp8_xla.backends"):
        mx.mxfp8_matmul(x, wp, backend="flashinfer", name="up")
    assert caplog.records == []


def test_a_layer_with_swizzled_scales_swizzles_only_the_activation_scales(fake_flashinfer):
    """After swizzle_params, an MXFP8Dense on the flashinfer backend passes a FlashInferWeight: its program holds the
    activation scales' swizzle and no weight-scale swizzle (XLA:CPU keeps that one inside a scan body otherwise)."""
    layer = MXFP8Dense(256, dtype=jnp.bfloat16, backend="flashinfer")
    x = jnp.ones((4, 384), jnp.bfloat16)
    params = layer.init(jax.random.key(0), x)
    swizzled = swizzle_params(params)
    count = lambda p: str(jax.make_jaxpr(layer.apply)(p, x)).count("transpose[")  # noqa: E731
    assert count(params) == 2 and count(swizzled) == 1
    np.testing.assert_array_equal(layer.apply(swizzled, x), layer.apply(params, x))


def test_add_rms_norm_matmul_takes_a_prepared_weight():
    x, delta = jnp.ones((2, 256), jnp.bfloat16), jnp.full((2, 256), 0.5, jnp.bfloat16)
    w = quantize(jnp.asarray(np.random.default_rng(0).standard_normal((128, 256)), jnp.float32))
    args = (x, delta, jnp.ones(256, jnp.bfloat16))
    want = mx.add_rms_norm_matmul(*args, w, eps=1e-6)
    got = mx.add_rms_norm_matmul(*args, fi_backend.prepare_weight(w), eps=1e-6)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_xla_cpu_keeps_the_weight_scale_swizzle_inside_a_scan_body(fake_flashinfer):
    """The premise of swizzle_params (docs/backends.md): given [N, K/32] scales, the swizzle of a weight that every
    step of a lax.scan decode loop reads is not hoisted out of the loop by XLA:CPU; it runs once a step."""
    x, w = _data((4,), 512, 256)

    def decode(x, w):
        step = lambda h, _: (mx.mxfp8_matmul(h, w, backend="flashinfer").astype(h.dtype)[:, :256], None)  # noqa: E731
        return jax.lax.scan(step, x, None, length=8)[0]

    hlo = jax.jit(decode).lower(x.astype(jnp.bfloat16), w).compile().as_text()
    # stripped: the first computation follows two blank lines (its name would start with a newline)
    computations = {c.split(" ", 1)[0]: c for c in map(str.strip, hlo.split("\n\n"))}
    swizzles = [
        name for name, text in computations.items() if "u8[512,8]" in text.split("\n", 1)[0] and "transpose(" in text
    ]
    assert len(swizzles) == 1  # the weight scales' pad-and-transpose fusion
    bodies = re.findall(r"\bwhile\(.*?body=(%[\w.-]+)", hlo)
    assert len(bodies) == 1 and f"calls={swizzles[0]}," in computations[bodies[0]]  # called from the loop's body
