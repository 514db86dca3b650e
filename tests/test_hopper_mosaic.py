"""The hopper backend's Mosaic GPU kernel on CPU: its decode math, its configs, and that it lowers.

The kernel itself runs only on an SM90 GPU (there is no interpret mode for Mosaic GPU);
its numerics against the emulation backend and its speed are measured on an H100 by
benchmarks/mosaic_sweep.py (results in benchmarks/results/mosaic_*_h100.*).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import H100

from mxfp8_xla import MXArray
from mxfp8_xla.backends import hopper, hopper_mosaic
from mxfp8_xla.backends.select import override_capability

ALL_E4M3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)


def expected_bf16(codes: np.ndarray, scale: int) -> np.ndarray:
    """E4M3 codes times ``2**(scale - 127)`` in float64, rounded once to bf16 (NumPy, no JAX).

    Products beyond bf16's range (large codes at bytes >= 248) become +-inf, as on the GPU.
    """
    with np.errstate(over="ignore"):
        return (codes.astype(np.float64) * 2.0 ** (scale - 127)).astype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("jit", [False, True])
def test_decode_block_is_exact_for_every_code_and_scale(jit):
    # Bytes >= 10 keep every product a float32 normal: XLA:CPU flushes float32 subnormals,
    # which the GPU computes exactly (bytes 0 and 1 were checked on the H100, mosaic_edge_cases_h100.json).
    scales = np.arange(10, 255, dtype=np.uint8)
    q = np.tile(ALL_E4M3.reshape(8, 32), (len(scales), 1))  # every code, 8 rows per scale byte
    s = np.repeat(scales, 8)
    decode = jax.jit(hopper_mosaic.decode_block) if jit else hopper_mosaic.decode_block
    got = np.asarray(decode(jnp.asarray(q), jnp.asarray(s)))
    want = np.concatenate([expected_bf16(ALL_E4M3.reshape(8, 32), int(b)) for b in scales])
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), np.isnan(want.astype(np.float32)))
    finite = ~np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(got.view(np.uint16)[finite], want.view(np.uint16)[finite])


def test_decode_block_scale_byte_255_is_nan():
    got = np.asarray(hopper_mosaic.decode_block(jnp.asarray(ALL_E4M3.reshape(8, 32)), jnp.full((8,), 255, jnp.uint8)))
    assert np.all(np.isnan(got.astype(np.float32)))


@pytest.mark.parametrize(
    ("cfg", "shape", "message"),
    [
        (hopper_mosaic.MosaicConfig(), (257, 4096, 4096), "M=257 rows exceed 256"),
        (
            hopper_mosaic.MosaicConfig(),
            (256, 4096, 4096),
            "4 stages of 81920 bytes (weight [128, 128] fp8 + activation [256, 128] bf16) exceed the 225280-byte",
        ),
        (hopper_mosaic.MosaicConfig(), (16, 4160, 4096), "N=4160 is not a multiple of 128"),
        (hopper_mosaic.MosaicConfig(split_k=4), (16, 4096, 1280), "K=1280 is not a multiple of tile_k*split_k=512"),
        (hopper_mosaic.MosaicConfig(tile_k=192), (16, 4096, 4608), "tile_k=192 must be a multiple of 128"),
    ],
)
def test_config_check_names_what_does_not_fit(cfg, shape, message):
    assert message in cfg.check(*shape)


@pytest.mark.parametrize(
    ("m", "num_wgs", "tile_k", "stages"),
    [(1, 2, 128, 4), (64, 2, 128, 4), (128, 2, 128, 4), (168, 2, 128, 3), (256, 2, 128, 2), (256, 1, 256, 1)],
)
def test_stages_for_rows_fill_the_shared_memory_budget(m, num_wgs, tile_k, stages):
    got = hopper_mosaic.stages_for_rows(m, num_wgs, tile_k)
    assert got == stages
    cfg = hopper_mosaic.MosaicConfig(num_wgs=num_wgs, tile_k=tile_k, stages=got)
    assert cfg.check(m, 4096, 4096) is None
    if got < 4:  # one stage more would not fit
        assert "shared memory budget" in hopper_mosaic.MosaicConfig(num_wgs, tile_k, got + 1).check(m, 4096, 4096)


def test_matmul_2d_rejects_a_shape_it_cannot_run():
    w = MXArray(jnp.zeros((96, 256), jnp.float8_e4m3fn), jnp.zeros((96, 8), jnp.uint8))
    with pytest.raises(ValueError, match=r"x \[4, 256\] @ w \[96, 256\]\.T: N=96 is not a multiple of 128"):
        hopper_mosaic.matmul_2d(jnp.zeros((4, 256), jnp.bfloat16), w, jnp.bfloat16)


def test_auto_runs_mosaic_only_where_it_measured_faster(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert hopper.mosaic_config(16, 4096, 14336) == hopper_mosaic.MosaicConfig(split_k=4)
    assert hopper.mosaic_config(1, 4096, 14336) == hopper_mosaic.MosaicConfig(split_k=4)
    assert hopper.mosaic_config(16, 14336, 4096) is None  # up to 16 rows at K = 4096: the Triton kernel
    assert hopper.mosaic_config(17, 14336, 4096) == hopper_mosaic.MosaicConfig()  # 112 CTAs: no split
    assert hopper.mosaic_config(64, 4096, 4096) == hopper_mosaic.MosaicConfig(split_k=4)
    blocks = hopper_mosaic.setmaxnreg_ignored()  # jaxlib 0.12: the weight tile loaded block by block from 224 rows
    assert hopper.mosaic_config(256, 28672, 4096) == hopper_mosaic.MosaicConfig(stages=2, block_loads=blocks)  # smem
    assert hopper.mosaic_config(257, 28672, 4096) is None  # beyond wgmma's 256 columns: cuBLAS
    assert hopper.mosaic_config(64, 4160, 4096) is None  # N not a multiple of 128: the Triton kernel


@pytest.mark.parametrize(
    ("m", "n", "k", "split_k"),
    [
        (32, 5120, 3456, 3),  # 40 CTAs, 27 tiles: the smallest divisor reaching 100 CTAs (9 tiles a CTA)
        (256, 5120, 3456, 3),  # 2 stages at 256 rows
        (64, 3584, 2432, 1),  # 28 CTAs, 19 tiles: 19 ways would leave one tile a CTA, fewer than its 4 stages
        (64, 2048, 4864, 2),  # 16 CTAs, 38 tiles: split in two, then 19 tiles are left, prime
        (200, 1024, 1920, 5),  # 8 CTAs, 15 tiles, 3 stages: no divisor reaches 100 CTAs; the largest leaving 3 tiles
        (64, 14336, 4096, 1),  # 112 CTAs: no split
    ],
)
def test_an_odd_tile_count_is_split_into_a_divisor_that_keeps_the_pipeline_full(m, n, k, split_k):
    cfg = hopper.mosaic_kernel_config(m, n, k)
    assert cfg.split_k == split_k and cfg.check(m, n, k) is None
    assert (k // cfg.tile_k // split_k >= cfg.stages) or split_k & (split_k - 1) == 0  # odd splits keep the stages


def test_kernel_config_is_the_routed_one_also_where_another_kernel_runs(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    assert hopper.mosaic_config(16, 6144, 4096) is None  # auto: the Triton kernel
    assert hopper.mosaic_kernel_config(16, 6144, 4096) == hopper_mosaic.MosaicConfig(split_k=4)  # 48 CTAs x 4
    assert hopper.mosaic_kernel_config(64, 6144, 4096) == hopper.mosaic_config(64, 6144, 4096)


def test_matmul_routes_each_row_count_to_its_kernel(monkeypatch):
    """Which kernel ``hopper.matmul`` traces for M rows at (N, K) = (4096, 4096) under ``auto``."""
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    called = []

    def spy(name: str):
        def matmul_2d(x, w, out_dtype, *args, **kwargs):
            called.append(name)
            return jnp.zeros((x.shape[0], w.shape[0]), out_dtype)

        return matmul_2d

    monkeypatch.setattr(hopper_mosaic, "matmul_2d", spy("mosaic"))
    monkeypatch.setattr(hopper, "matmul_2d", spy("triton"))
    w = MXArray(jnp.zeros((4096, 4096), jnp.float8_e4m3fn), jnp.zeros((4096, 128), jnp.uint8))

    def kernel(m: int) -> str:
        called.clear()
        with override_capability(H100):
            jax.eval_shape(lambda x: hopper.matmul(x, w, jnp.bfloat16), jnp.zeros((m, 4096), jnp.bfloat16))
        return called[0] if called else "cublas"

    # 1-8 raw rows take the GEMV kernels (tests/test_cuda_gemv.py)
    assert [kernel(m) for m in (16, 32, 256, 300)] == ["triton", "mosaic", "mosaic", "cublas"]
    with override_capability(H100), hopper.interpret_mode():  # no interpret mode for Mosaic GPU
        called.clear()
        jax.eval_shape(lambda x: hopper.matmul(x, w, jnp.bfloat16), jnp.zeros((32, 4096), jnp.bfloat16))
    assert called == ["triton"]


def test_environment_variable_picks_the_kernels(monkeypatch):
    monkeypatch.setenv(hopper.SMALL_M_KERNEL_ENV, "mosaic")
    assert hopper.mosaic_config(16, 14336, 4096) == hopper_mosaic.MosaicConfig()
    assert hopper.mosaic_config(64, 6144, 4096) == hopper_mosaic.MosaicConfig(split_k=4)  # 48 CTAs x 4
    assert hopper.mosaic_config(257, 14336, 4096) is None  # beyond wgmma's 256 columns
    monkeypatch.setenv(hopper.SMALL_M_KERNEL_ENV, "triton")
    assert hopper.mosaic_config(16, 4096, 14336) is None
    monkeypatch.setenv(hopper.SMALL_M_KERNEL_ENV, "pallas")  # auto's Pallas routing
    assert hopper.mosaic_config(16, 4096, 14336) == hopper.mosaic_kernel_config(16, 4096, 14336)
    assert hopper.mosaic_config(16, 14336, 4096) is None
    monkeypatch.setenv(hopper.SMALL_M_KERNEL_ENV, "cuda")
    with pytest.raises(ValueError, match="SMALL_M='cuda': expected 'auto', 'pallas', 'triton' or 'mosaic'"):
        hopper.mosaic_config(16, 4096, 14336)


@pytest.mark.parametrize("m", [1, 16, 100, 256])
@pytest.mark.parametrize(
    ("split_k", "out_dtype"), [(2, jnp.bfloat16), (1, jnp.bfloat16), (1, jnp.float16), (1, jnp.float32)], ids=str
)
def test_kernel_lowers_for_an_sm90_gpu(m, split_k, out_dtype):
    """Without a K split the kernel stores the output dtype itself (jax 0.12 refused 16-bit stores before
    ``store_to_gmem``); with one, float32 partial sums."""
    n, k = 256, 1024
    cfg = hopper_mosaic.MosaicConfig(split_k=split_k, stages=hopper_mosaic.stages_for_rows(m, 2, 128))

    def run(x, data, scale):
        return hopper_mosaic.matmul_2d(x, MXArray(data, scale), out_dtype, cfg)

    args = (
        jax.ShapeDtypeStruct((m, k), jnp.bfloat16),
        jax.ShapeDtypeStruct((n, k), jnp.float8_e4m3fn),
        jax.ShapeDtypeStruct((n, k // 32), jnp.uint8),
    )
    text = jax.jit(run).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in text


def test_store_to_gmem_asks_for_a_plain_store_where_plgpu_has_store(monkeypatch):
    calls = []
    monkeypatch.setattr(hopper_mosaic.plgpu, "store", lambda *args, **kw: calls.append((args, kw)), raising=False)
    hopper_mosaic.store_to_gmem("ref", "value")
    assert calls == [(("ref", "value"), dict(optimized=False))]
    monkeypatch.delattr(hopper_mosaic.plgpu, "store")
    ref = np.zeros(3)
    hopper_mosaic.store_to_gmem(ref, np.arange(3.0))  # jax 0.10.2 and 0.11.2: ref[...] = value
    np.testing.assert_array_equal(ref, [0.0, 1.0, 2.0])


def test_load_whole_passes_an_index_only_where_plgpu_load_requires_one(monkeypatch):
    calls = []
    monkeypatch.setattr(hopper_mosaic.plgpu, "load", lambda *args, **kw: calls.append((args, kw)))
    for wants in (True, False):
        monkeypatch.setattr(hopper_mosaic, "_load_wants_index", lambda wants=wants: wants)
        hopper_mosaic.load_whole("ref", "layout")
    kw = dict(layout="layout", optimized=False)
    assert calls == [(("ref", ()), kw), (("ref",), kw)]


@pytest.mark.parametrize(("m", "split_k"), [(128, 1), (256, 1), (256, 2)])
def test_kernel_with_block_loads_lowers_to_another_kernel(m, split_k):
    """The weight tile loaded one 32-column block at a time (``block_loads``) lowers, and changes the kernel."""
    n, k = 256, 1024
    args = (
        jax.ShapeDtypeStruct((m, k), jnp.bfloat16),
        jax.ShapeDtypeStruct((n, k), jnp.float8_e4m3fn),
        jax.ShapeDtypeStruct((n, k // 32), jnp.uint8),
    )

    def lowered(block_loads: bool) -> str:
        cfg = hopper_mosaic.MosaicConfig(
            split_k=split_k, stages=hopper_mosaic.stages_for_rows(m, 2, 128), block_loads=block_loads
        )
        run = lambda x, data, scale: hopper_mosaic.matmul_2d(x, MXArray(data, scale), jnp.bfloat16, cfg)  # noqa: E731
        return jax.jit(run).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

    with_blocks = lowered(True)
    assert "mosaic_gpu" in with_blocks
    assert with_blocks != lowered(False)


@pytest.mark.parametrize(
    ("ignored", "m", "expected"),
    [
        (True, 128, False),
        (True, 216, False),
        (True, 217, True),  # padded to 224
        (True, 224, True),
        (True, 256, True),
        (False, 256, False),
        (False, 16, False),
    ],
)
def test_block_loads_from_224_padded_rows_only_where_ptxas_ignores_setmaxnreg(monkeypatch, ignored, m, expected):
    monkeypatch.setattr(hopper_mosaic, "setmaxnreg_ignored", lambda: ignored)
    assert hopper.mosaic_kernel_config(m, 14336, 4096).block_loads is expected


@pytest.mark.parametrize(
    ("version", "ignored"), [("0.10.2", False), ("0.11.2", False), ("0.12.0.1", True), ("1.0.0", True)]
)
def test_setmaxnreg_is_ignored_from_jaxlib_0_12(monkeypatch, version, ignored):
    import jaxlib.version

    monkeypatch.setattr(jaxlib.version, "__version__", version)
    hopper_mosaic.setmaxnreg_ignored.cache_clear()
    try:
        assert hopper_mosaic.setmaxnreg_ignored() is ignored
    finally:
        hopper_mosaic.setmaxnreg_ignored.cache_clear()
