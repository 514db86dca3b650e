"""The hopper backend's Pallas kernels, run in Pallas interpret mode on CPU.

Interpret mode executes the same kernel bodies (tiling, masking, split-K, in-kernel
quantization) with XLA:CPU, so every config's numerics are checked here; speed is
measured on the GPU by benchmarks/hopper_sweep.py and bench_gemm.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import H100
from hypothesis import given, settings
from hypothesis import strategies as st

import mxfp8_xla as mx
from mxfp8_xla.backends import hopper, pallas_quantize
from mxfp8_xla.backends.select import override_capability
from mxfp8_xla.ste import mxfp8_linear_ste


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


CONFIGS = [
    hopper.KernelConfig(bm=16, bn=32, bk=128, split_k=1, tile_dequant=True),
    hopper.KernelConfig(bm=16, bn=64, bk=128, split_k=2, tile_dequant=True),
    hopper.KernelConfig(bm=16, bn=32, bk=64, split_k=2, tile_dequant=True, swap_ab=True),
    hopper.KernelConfig(bm=16, bn=32, bk=64, split_k=2),
    hopper.KernelConfig(bm=16, bn=32, bk=32, split_k=1, swap_ab=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("m", [1, 5, 20])
@pytest.mark.parametrize("prequantized", [False, True])
def test_kernel_matches_emulation(cfg, m, prequantized, rng):
    k, n = 256, 128
    x = (rng.standard_normal((m, k)) * 4).astype(np.float32)
    w = mx.quantize((rng.standard_normal((n, k)) * 0.02).astype(np.float32))
    want = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32)
    xin = mx.quantize(x) if prequantized else jnp.asarray(x)
    got = hopper.matmul_2d(xin, w, jnp.float32, cfg, interpret=True)
    assert got.shape == (m, n)
    assert rel_err(got, want) < 1e-6  # float32 accumulation in another order


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=str)
def test_in_kernel_quantization_is_bit_identical_to_the_separate_pass(cfg, rng):
    # benchmarks/fold_quantize_probe.py times the raw-activation route against the shipped one on the
    # premise that only the speed differs; the two must agree bit for bit, not just within tolerance
    x = (rng.standard_normal((5, 256)) * 4).astype(np.float32)
    w = mx.quantize((rng.standard_normal((128, 256)) * 0.02).astype(np.float32))
    raw = np.asarray(hopper.matmul_2d(jnp.asarray(x), w, jnp.float32, cfg, interpret=True))
    separate = np.asarray(hopper.matmul_2d(mx.quantize(x), w, jnp.float32, cfg, interpret=True))
    np.testing.assert_array_equal(raw.view(np.uint32), separate.view(np.uint32))


def test_kernel_propagates_non_finite_blocks(rng):
    x = rng.standard_normal((3, 128)).astype(np.float32)
    x[1, 7] = np.inf
    w = mx.quantize(rng.standard_normal((64, 128)).astype(np.float32))
    got = np.asarray(hopper.matmul_2d(x, w, jnp.float32, CONFIGS[0], interpret=True))
    assert np.all(np.isnan(got[1])) and np.all(np.isfinite(got[[0, 2]]))


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_kernel_at_extreme_block_scales_matches_emulation(cfg):
    # Elements 2**-8 under scale bytes 191 (2**64) on both sides: every product is 2**112, finite in float32,
    # while the two factors' product 2**128 is not. A zero block under the same scales must stay 0.
    m, n, k = 2, 64, 256
    data = lambda rows: jnp.full((rows, k), 2.0**-8, jnp.float8_e4m3fn)  # noqa: E731
    x = mx.MXArray(data(m).at[1].set(0), jnp.full((m, k // 32), 191, jnp.uint8))
    w = mx.MXArray(data(n), jnp.full((n, k // 32), 191, jnp.uint8))
    want = np.asarray(mx.mxfp8_matmul(x, w, out_dtype=jnp.float32))
    got = np.asarray(hopper.matmul_2d(x, w, jnp.float32, cfg, interpret=True))
    assert want[0, 0] == k * 2.0**112 and np.all(want[1] == 0)
    np.testing.assert_array_equal(got, want)


def test_zero_rows_give_an_empty_product():
    w = mx.quantize(jnp.ones((128, 256)))
    with override_capability(H100), hopper.interpret_mode():
        for x in (jnp.ones((0, 256), jnp.bfloat16), mx.quantize(jnp.ones((2, 0, 256))), jnp.ones((0, 3, 256))):
            got = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32, backend="hopper")
            assert got.shape == (*x.shape[:-1], 128) and got.dtype == jnp.float32


@pytest.mark.parametrize(
    ("n", "k", "split_k"),
    [(6144, 4096, 4), (4096, 4096, 4), (28672, 4096, 1), (14336, 4096, 2), (1024, 4096, 8), (1024, 256, 2)],
)
def test_default_config_up_to_16_rows_splits_to_256_programs(n, k, split_k):
    # the H200 sweep's winner at the first four shapes; the split stops at 8 and where K runs out
    for m in (1, 16):
        assert hopper.default_config(m, n, k) == hopper.KernelConfig(
            bm=16, bn=64, bk=128, split_k=split_k, num_warps=4, num_stages=4, tile_dequant=True
        )


def test_default_config_above_16_rows_keeps_the_h100_rule():
    assert hopper.default_config(32, 14336, 4096) == hopper.KernelConfig(
        bm=32, bn=128, bk=128, split_k=1, num_warps=4, num_stages=4, tile_dequant=True
    )
    assert hopper.default_config(64, 4096, 14336).bm == 64
    assert hopper.default_config(64, 4096, 14336).split_k == 2


def test_config_check_names_the_problem():
    with pytest.raises(ValueError, match=r"K=384 is not a multiple of bk\*split_k=256"):
        hopper.matmul_2d(jnp.ones((2, 384)), mx.quantize(jnp.ones((64, 384))), jnp.float32, CONFIGS[1])


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("prequantized", [False, True])
def test_kernel_masks_a_last_partial_n_tile(cfg, prequantized, rng):
    # N = 100: the last tile of 32 or 64 weight rows is partial; its rows past N must neither be read into the
    # product nor written (the output has exactly N columns, every one emulation's)
    m, n, k = 5, 100, 256
    x = (rng.standard_normal((m, k)) * 4).astype(np.float32)
    w = mx.quantize((rng.standard_normal((n, k)) * 0.02).astype(np.float32))
    want = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32)
    got = hopper.matmul_2d(mx.quantize(x) if prequantized else jnp.asarray(x), w, jnp.float32, cfg, interpret=True)
    assert got.shape == (m, n)
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize(
    ("m", "k", "bk", "split_k"),
    [
        (1, 4096, 128, 4),  # 32 tiles: split in two while it divides them and programs are wanted, up to 8
        (1, 2368, 64, 37),  # 37 tiles of 64: no split in two, so into the smallest divisor reaching 256 programs
        (16, 2432, 128, 19),  # 19 tiles of 128
        (1, 4160, 64, 5),  # 65 tiles: 5 x 96 programs reach 256
        (1, 96, 32, 3),
        (16, 4864, 128, 38),  # 38 tiles: 2, then 19
        (64, 2368, 64, 37),  # 37 x 64 rows of float32 partial sums: 4x the weight's 2368 bytes a row, the most
        (32, 1184, 32, 37),  # 37 tiles of 32 at 32 rows: partial sums 4x the weight's bytes
        (33, 1184, 32, 1),  # at 33 rows 4.1x: no split
    ],
)
def test_default_config_takes_the_widest_k_tile_and_splits_k_into_divisors(m, k, bk, split_k):
    cfg = hopper.default_config(m, 6144, k)
    assert (cfg.bk, cfg.split_k) == (bk, split_k) and cfg.check(m, 6144, k) is None


@settings(max_examples=300, deadline=None)
@given(m=st.integers(1, 64), n=st.integers(1, 1 << 17), blocks=st.integers(1, 1024))
def test_default_config_runs_every_shape_of_whole_blocks(m, n, blocks):
    k = 32 * blocks
    cfg = hopper.default_config(m, n, k)
    assert cfg.check(m, n, k) is None and k % (cfg.bk * cfg.split_k) == 0 and cfg.bk in (32, 64, 128)
    assert k % (2 * cfg.bk) or cfg.bk == 128  # the widest tile that divides K
    # beyond the measured splits in two (at most 8), float32 partial sums stay within 4x the weight's bytes
    assert cfg.split_k <= 8 or cfg.split_k * 4 * m <= hopper.PARTIAL_SUMS_MAX_WEIGHTS * k


@pytest.mark.parametrize(
    ("m", "n", "k"), [(5, 100, 96), (80, 100, 96), (3, 1000, 2368), (40, 52, 160), (20, 100, 2368), (20, 100, 1184)]
)
@pytest.mark.parametrize("prequantized", [False, True])
def test_backend_serves_shapes_off_the_kernels_tiles(m, n, k, prequantized, rng):
    # N off 64 and K off 128 (any K of whole 32-blocks): the Triton GEMM (masked N, narrower K tiles, K split into
    # its 37 tiles at 20 rows) and the decode-then-cuBLAS path (and at 20 rows where a 37-way split of K = 1184 would
    # write partial sums 2.5x the weight's bytes), where the backend once refused and "auto" ran emulation
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = mx.quantize(rng.standard_normal((n, k)).astype(np.float32))
    want = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32)
    xin = mx.quantize(x) if prequantized else jnp.asarray(x)
    with override_capability(H100), hopper.interpret_mode():
        got = jax.jit(lambda a: mx.mxfp8_matmul(a, w, out_dtype=jnp.float32, backend="hopper"))(xin)
    assert got.shape == (m, n)
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize(
    ("m", "n", "k", "triton"),
    [
        (16, 3584, 2368, True),  # up to 16 rows always
        (32, 3584, 2368, True),  # split 37: partial sums 2.0x the weight's bytes
        (33, 3584, 2368, False),  # 2.06x
        (48, 3584, 2368, False),  # 3.0x: cuBLAS ran 10-25% faster on an H200
        (64, 5120, 1728, True),  # split 3: 0.44x
        (64, 4096, 4096, True),
        (65, 4096, 4096, False),  # above SMALL_M_MAX
        (20, 100, 1184, False),  # split 37 at 20 rows: 2.5x
    ],
)
def test_from_17_rows_a_split_writing_more_than_twice_the_weights_bytes_goes_to_cublas(m, n, k, triton):
    assert hopper.takes_triton(m, n, k) is triton
    sums = hopper.default_config(m, n, k).split_k * m * n * 4
    assert triton == (m <= 16 or (m <= hopper.SMALL_M_MAX and sums <= hopper.CUBLAS_PARTIAL_SUMS_WEIGHTS * n * k))


def test_the_route_follows_takes_triton():
    x, w = jnp.ones((48, 2368), jnp.bfloat16), mx.quantize(jnp.ones((3584, 2368), jnp.float32))
    with override_capability(H100):
        jaxpr = str(jax.make_jaxpr(lambda x: hopper.matmul(x, w, jnp.bfloat16))(x))
        assert "mxfp8_hopper_gemm" not in jaxpr and "dot_general" in jaxpr
        jaxpr = str(jax.make_jaxpr(lambda x: hopper.matmul(x[:32], w, jnp.bfloat16))(x))
        assert "mxfp8_hopper_gemm" in jaxpr


@pytest.mark.parametrize("m", [5, 80])  # the Pallas GEMM, and the decode-then-cuBLAS path
@pytest.mark.parametrize("prequantized", [False, True])
def test_backend_entry_matches_emulation(m, prequantized, rng):
    x = rng.standard_normal((2, m // 2 + 1, 256)).astype(np.float32)
    w = mx.quantize(rng.standard_normal((128, 256)).astype(np.float32))
    want = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32)
    with override_capability(H100), hopper.interpret_mode():
        got = hopper.matmul(mx.quantize(x) if prequantized else jnp.asarray(x), w, jnp.float32, name="mlp")
        through_api = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32, backend="hopper")
    assert got.shape == through_api.shape == x.shape[:2] + (128,)
    assert rel_err(got, want) < 1e-6  # float32 accumulation in another order
    np.testing.assert_array_equal(through_api, got)


def test_large_m_path_rounds_once_into_bf16(rng):
    """bf16 output comes straight from the float32-accumulating dot: within one bf16 ulp of emulation."""
    x = rng.standard_normal((80, 1024)).astype(np.float32)
    w = mx.quantize(rng.standard_normal((128, 1024)).astype(np.float32))
    want = np.asarray(mx.mxfp8_matmul(x, w, out_dtype=jnp.bfloat16), np.float32)
    with override_capability(H100), hopper.interpret_mode():
        got = np.asarray(hopper.matmul(jnp.asarray(x), w, jnp.bfloat16, name="mlp"), np.float32)
    assert np.all(np.abs(got - want) <= np.abs(want) * 2.0**-8)


def edge_case_rows(rng) -> np.ndarray:
    """40 x 512 float32: NaN, Inf, float32 subnormals, a block whose scale byte is 0, zeros, huge values."""
    x = (rng.standard_normal((40, 512)) * 10).astype(np.float32)
    x[3, 5], x[4, 40], x[5, 70] = np.nan, np.inf, -np.inf
    x[7, :32] = rng.standard_normal(32) * 1e-39  # subnormal inputs
    x[8, 32:64] = rng.standard_normal(32) * 2.0**-130  # amax below 448 * 2**-127: scale byte 0
    x[9, 64:96] = 0.0
    x[10, 96:128] = rng.standard_normal(32) * 1e38
    return x


def bits(a) -> np.ndarray:
    return np.asarray(a).view(np.uint16)


def test_pallas_decode_is_bit_exact(rng):
    q = mx.quantize(edge_case_rows(rng))
    got = pallas_quantize.decode_2d(q, bm=16, bk=128, interpret=True)
    np.testing.assert_array_equal(bits(got), bits(mx.dequantize(q, jnp.bfloat16)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_fake_quantize_is_bit_exact(dtype, rng):
    x = jnp.asarray(edge_case_rows(rng), dtype)
    got = pallas_quantize.fake_quantize_2d(x, bm=16, bk=256, interpret=True)
    np.testing.assert_array_equal(bits(got), bits(mx.dequantize(mx.quantize(x), jnp.bfloat16)))


@pytest.mark.parametrize("rows", [3, 8, 40])
def test_pallas_fake_quantize_pads_zero_rows_in_the_same_pass(rows, rng):
    x = jnp.asarray(rng.standard_normal((3, 256)) * 10, jnp.bfloat16)
    got = np.asarray(pallas_quantize.fake_quantize_2d(x, bm=16, bk=256, rows=rows, interpret=True))
    assert got.shape == (rows, 256)
    np.testing.assert_array_equal(bits(got[:3]), bits(mx.dequantize(mx.quantize(x), jnp.bfloat16)))
    np.testing.assert_array_equal(bits(got[3:]), 0)


def test_pallas_fake_quantize_refuses_fewer_rows_than_x():
    with pytest.raises(ValueError, match=r"rows=2 is fewer than x's 4 rows \(x shape \(4, 256\)\)"):
        pallas_quantize.fake_quantize_2d(jnp.ones((4, 256)), rows=2, interpret=True)


def test_forced_hopper_on_cpu_raises_early():
    w = mx.quantize(jnp.ones((128, 256)))
    with pytest.raises(mx.BackendUnavailableError, match="the hopper kernel needs an NVIDIA SM90 GPU"):
        mx.mxfp8_matmul(jnp.ones((4, 256)), w, backend="hopper", name="blk.0")


@pytest.mark.parametrize("tile", [False, True])
def test_pallas_quantize_is_bit_exact(tile, rng):
    x = jnp.asarray(rng.standard_normal((40, 256)) * 10, jnp.bfloat16)
    x = x.at[3, 5].set(jnp.nan).at[7, 100].set(1e-39)
    want = mx.quantize(x)
    got = pallas_quantize.quantize_2d(x, bm=16, bk=128, tile=tile, interpret=True)
    np.testing.assert_array_equal(np.asarray(got.data).view(np.uint8), np.asarray(want.data).view(np.uint8))
    np.testing.assert_array_equal(np.asarray(got.scale), np.asarray(want.scale))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 1e38 in float16: Inf, one more edge case
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("bk, bn", [(32, 16), (64, 32), (32, 128)])
def test_pallas_transposed_quantize_is_quantize_along_axis_0(dtype, bk, bn, rng):
    """Train mode's kernel quantization: a ``[K, N]`` kernel (N = 40: a partial last tile) to ``[N, K]``, bit for
    bit ``quantize(kernel, axis=0)``, edge cases included."""
    kernel = jnp.asarray(edge_case_rows(rng).T, dtype)  # [512, 40]
    want = mx.quantize(kernel, axis=0)
    got = pallas_quantize.quantize_transposed_2d(kernel, bk=bk, bn=bn, interpret=True)
    assert got.shape == (40, 512) and got.scale.shape == (40, 16)
    np.testing.assert_array_equal(np.asarray(got.data).view(np.uint8), np.asarray(want.data).view(np.uint8))
    np.testing.assert_array_equal(np.asarray(got.scale), np.asarray(want.scale))


def test_pallas_transposed_quantize_names_bad_kernels():
    with pytest.raises(ValueError, match=r"K=224 must be a multiple of bk=64"):
        pallas_quantize.quantize_transposed_2d(jnp.ones((224, 8)), bk=64, interpret=True)
    with pytest.raises(
        ValueError, match=r"x \[K, N\] has shape \(48, 8\) and dtype float32: the blocked axis 0 must be a multiple"
    ):
        pallas_quantize.quantize_transposed_2d(jnp.ones((48, 8)), interpret=True)
    with pytest.raises(ValueError, match=r"must be 2-D \[K, N\], got shape \(2, 64, 8\)"):
        pallas_quantize.quantize_transposed_2d(jnp.ones((2, 64, 8)), interpret=True)


def test_train_mode_on_hopper_quantizes_in_its_kernels_and_matches_emulation(rng):
    """The STE on the hopper backend quantizes x and the kernel with its Pallas kernels (bit-identical), so its
    forward and gradients are emulation's up to the product's float32 summation order."""
    x = jnp.asarray(rng.standard_normal((3, 5, 256)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((256, 192)) * 0.05, jnp.float32)  # N: a partial last tile
    g = jnp.asarray(rng.standard_normal((3, 5, 192)), jnp.float32)

    def run(backend):
        fn = lambda x, k: mxfp8_linear_ste(x, k, backend=backend, out_dtype=jnp.float32)  # noqa: E731
        y, vjp = jax.vjp(fn, x, kernel)
        return (y, *vjp(g)), str(jax.make_jaxpr(fn)(x, kernel))

    want, _ = run("emulation")
    with override_capability(H100), hopper.interpret_mode():
        got, jaxpr = run("hopper")
    assert {"mxfp8_quantize", "mxfp8_quantize_transposed"} <= set(re.findall(r"mxfp8_\w+", jaxpr))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert rel_err(a, b) < 1e-6


def test_pallas_tile_kernels_name_a_k_that_does_not_tile():
    q = mx.quantize(jnp.ones((4, 256)))
    with pytest.raises(ValueError, match=r"pallas mxfp8_decode: K=256 must be a multiple of bk=512"):
        pallas_quantize.decode_2d(q, bk=512, interpret=True)
    with pytest.raises(ValueError, match=r"pallas mxfp8_fake_quantize: K=256 must be a multiple of bk=512"):
        pallas_quantize.fake_quantize_2d(jnp.ones((4, 256)), bk=512, interpret=True)
