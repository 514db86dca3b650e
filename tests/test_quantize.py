"""quantize/dequantize against the independent float64 reference, bit for bit."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mxfp8_xla as mx
from mxfp8_xla import numerics


def qbytes(a: mx.MXArray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(a.data).view(np.uint8), np.asarray(a.scale)


def assert_matches_reference(x) -> None:
    want_data, want_scale = reference.quantize(np.asarray(x, np.float32))
    for fn in (mx.quantize, jax.jit(mx.quantize)):
        got_data, got_scale = qbytes(fn(x))
        np.testing.assert_array_equal(got_scale, want_scale)
        np.testing.assert_array_equal(got_data, want_data)


@st.composite
def block_arrays(draw, dtype=np.float32):
    """Arrays [rows, 32 * nblocks]: each block its own magnitude in 1e-30..min(3e38, dtype max), signs, zeros."""
    rows = draw(st.integers(1, 3))
    nblocks = draw(st.integers(1, 4))
    mantissas = draw(hnp.arrays(np.float64, (rows, nblocks, 32), elements=st.floats(1 / 16, 1)))
    signs = draw(hnp.arrays(np.float64, (rows, nblocks, 32), elements=st.sampled_from([-1.0, 1.0])))
    top = np.log10(min(3e38, float(ml_dtypes.finfo(dtype).max)))
    log_mag = draw(hnp.arrays(np.float64, (rows, nblocks, 1), elements=st.floats(-30, top)))
    zero_mask = draw(hnp.arrays(np.bool_, (rows, nblocks, 32)))
    x = np.where(zero_mask & draw(st.booleans()), 0.0, signs * mantissas * 10.0**log_mag)
    return x.reshape(rows, nblocks * 32).astype(dtype)


@settings(max_examples=300, deadline=None)
@given(block_arrays())
def test_float32_matches_reference(x):
    assert_matches_reference(x)


@settings(max_examples=150, deadline=None)
@given(block_arrays(dtype=ml_dtypes.bfloat16))
def test_bfloat16_matches_reference(x):
    assert_matches_reference(jnp.asarray(x))


@settings(max_examples=100, deadline=None)
@given(block_arrays(dtype=np.float16))
def test_float16_matches_reference(x):
    assert_matches_reference(jnp.asarray(x))


@settings(max_examples=200, deadline=None)
@given(block_arrays())
def test_round_trip_within_half_e4m3_ulp(x):
    a = mx.quantize(x)
    back = np.asarray(mx.dequantize(a), np.float64)
    blocks = np.abs(x.astype(np.float64)).reshape(x.shape[0], -1, 32)
    err = np.abs(back - x).reshape(blocks.shape)
    # E4M3 has 3 mantissa bits: round-to-nearest is within 2**-4 of the block's amax.
    assert np.all(err <= 2.0**-4 * blocks.max(axis=-1, keepdims=True))
    np.testing.assert_array_equal(back, reference.dequantize(*qbytes(a)))


def block(*values, fill=0.0):
    x = np.full(32, fill, np.float32)
    x[: len(values)] = values
    return x[None]


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (1 + 1 / 16, 1.0),  # tie between 1.0 and 1.125 -> even (1.0)
        (1 + 3 / 16, 1.25),  # tie between 1.125 and 1.25 -> even (1.25)
        (-(1 + 1 / 16), -1.0),
        (2.0**-10, 0.0),  # tie between 0 and the smallest subnormal 2**-9 -> 0
        (3 * 2.0**-10, 2 * 2.0**-9),  # subnormal tie -> even
    ],
)
def test_round_half_to_even(value, want):
    # A 256 in the block pins the scale to 2**-1 (256 / 2**-1 = 512 > 448) ... use 448 for 2**0.
    x = block(448.0, value * 1.0)
    a = mx.quantize(x)
    assert int(a.scale[0, 0]) == 127
    assert float(a.data[0, 1].astype(jnp.float32)) == want


@pytest.mark.parametrize(
    ("amax", "scale_byte"),
    [
        (448.0, 127),  # exactly 448 * 2**0: e = 0
        (449.0, 128),
        (448.0 * 2.0**-13, 114),  # where XLA's log2 would give -12.999999 and ceil -12
        (448.0 * 2.0**100, 227),
        (1.0, 119),  # 1/448 -> 2**-8.8 -> e = -8
        (3e38, 247),
    ],
)
def test_scale_byte(amax, scale_byte):
    a = jax.jit(mx.quantize)(block(amax, -amax / 3))
    assert int(a.scale[0, 0]) == scale_byte
    assert_matches_reference(block(amax, -amax / 3))


def test_all_zero_block_and_signed_zeros():
    x = np.zeros((1, 64), np.float32)
    x[0, 1] = -0.0
    x[0, 40] = 3.0
    a = mx.quantize(x)
    np.testing.assert_array_equal(np.asarray(a.scale), [[0, 120]])  # 3/448 -> 2**-7.2 -> e = -7
    data = qbytes(a)[0]
    assert data[0, 0] == 0x00 and data[0, 1] == 0x80  # +0 and -0 keep their sign
    back = np.asarray(mx.dequantize(a))
    assert np.signbit(back[0, 1]) and back[0, 0] == 0


def test_subnormal_inputs_are_not_flushed():
    """XLA:CPU reads float32 subnormals as 0 (DAZ); quantize must not."""
    x = block(1e-40, -3e-41, 1.4e-45, 2e-39)
    assert_matches_reference(x)
    a = mx.quantize(x)
    assert int(a.scale[0, 0]) == 0
    # 1.4e-45 * 2**127 = 2.4e-7 is below E4M3's smallest subnormal: it rounds to 0.
    assert np.count_nonzero(qbytes(a)[0]) == 3
    # A subnormal beside a normal tiny value.
    assert_matches_reference(block(1e-37, 5e-39, -1e-40))


def test_bfloat16_subnormals():
    x = jnp.asarray(block(1e-39, -2e-40), jnp.bfloat16)
    assert_matches_reference(x)


def test_scale_byte_zero_dequantizes_exactly():
    x = block(2e-36, 1e-36, -3e-37)  # amax <= 448 * 2**-127: e = -127, byte 0
    a = mx.quantize(x)
    assert int(a.scale[0, 0]) == 0
    np.testing.assert_array_equal(
        np.asarray(mx.dequantize(a), np.float64)[0, :3], reference.dequantize(*qbytes(a))[0, :3]
    )


def neighbours(values: np.ndarray) -> np.ndarray:
    """Each positive finite value of a float dtype with the next one down and the next one up (its bits -1 and +1)."""
    bits = values.view(f"u{values.dtype.itemsize}")
    return np.concatenate([bits - 1, bits, bits + 1]).view(values.dtype)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16])
def test_every_scale_boundary_and_its_neighbours(dtype):
    """amax = 448 * 2**k and 2**k, and the floats either side, for every k the dtype holds (its subnormals included):
    each block's scale byte and elements as the reference gives them."""
    info = ml_dtypes.finfo(dtype)
    ks = np.arange(-160, 129)
    amax = np.concatenate([448.0 * 2.0**ks, 2.0**ks])
    amax = amax[(amax >= float(info.smallest_subnormal)) & (amax <= float(info.max))].astype(dtype)
    amax = neighbours(amax)
    amax = amax[np.isfinite(amax) & (amax > 0)]
    x = np.zeros((amax.size, 32), dtype)
    x[:, 0] = amax
    x[:, 1] = -(amax.astype(np.float64) / 3).astype(dtype)
    x[:, 2] = (amax.astype(np.float64) * 0.6875).astype(dtype)  # off the E4M3 grid once scaled
    assert_matches_reference(x)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_block_becomes_nan(bad, dtype):
    x = np.concatenate([block(1.0, bad, 2.0), block(1.0, 2.0)], axis=1).astype(dtype)
    a = jax.jit(mx.quantize)(x)
    np.testing.assert_array_equal(np.asarray(a.scale), [[255, 120]])  # 2/448 -> e = -7
    back = np.asarray(mx.dequantize(a))
    assert np.all(np.isnan(back[0, :32]))  # the whole block reads NaN
    np.testing.assert_array_equal(back[0, 32:34], [1.0, 2.0])
    assert np.isnan(np.asarray(a.data[0, 1].astype(jnp.float32)))


@settings(max_examples=100, deadline=None)
@given(block_arrays())
def test_quantize_blocks_along_a_middle_axis(x):
    """``quantize_blocks(blocks, axis=1)`` on a kernel's own ``[K/32, 32, N]`` layout: the same bytes as the blocks
    moved last (the kernel transposed)."""
    kernel = x.T  # [K, N]
    blocks = jnp.asarray(kernel.reshape(kernel.shape[0] // 32, 32, kernel.shape[1]))
    data, scale = jax.jit(numerics.quantize_blocks, static_argnums=1)(blocks, 1)
    want_data, want_scale = reference.quantize(x)
    np.testing.assert_array_equal(np.asarray(data).view(np.uint8).reshape(kernel.shape).T, want_data)
    np.testing.assert_array_equal(np.asarray(scale).T, want_scale)


def test_axis_moves_blocked_axis_last(rng):
    w = rng.standard_normal((64, 48)).astype(np.float32)  # [K, N]
    a = mx.quantize(w, axis=0)
    assert a.shape == (48, 64) and a.scale.shape == (48, 2)
    np.testing.assert_array_equal(qbytes(a)[0], reference.quantize(w.T)[0])


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_ranks_and_vmap(rank, rng):
    shape = (2, 3, 2, 64)[-rank:]
    x = rng.standard_normal(shape).astype(np.float32) * 10
    assert_matches_reference(x)
    if rank >= 2:
        a = jax.vmap(mx.quantize)(x)
        np.testing.assert_array_equal(qbytes(a)[0], reference.quantize(x)[0])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(
        ValueError, match=r"x has shape \(4, 48\) and dtype bfloat16: the blocked axis -1 must be a multiple"
    ):
        mx.quantize(jnp.zeros((4, 48), jnp.bfloat16))
    with pytest.raises(TypeError, match="int32.*float32, bfloat16, float16"):
        mx.quantize(jnp.zeros((4, 32), jnp.int32))
    with pytest.raises(TypeError, match="float64 is not supported"):
        mx.quantize(np.zeros((4, 32), np.float64))
    with pytest.raises(ValueError, match=r"shape \(40, 64\).*axis 0 must be a multiple of 32"):
        mx.quantize(jnp.zeros((40, 64)), axis=0)
    with pytest.raises(TypeError, match="dequantize expects an MXArray"):
        mx.dequantize(jnp.zeros((4, 32)))
    with pytest.raises(ValueError, match=r"shape \(4, 32\) and dtype float32: axis 5 is out of range for 2 dimensions"):
        mx.quantize(jnp.zeros((4, 32)), axis=5)
    with pytest.raises(TypeError, match=r"x must be an array \(jnp.asarray makes one\), got list"):
        mx.quantize([[1.0] * 32])
    for axis in (None, 1.0, True):
        with pytest.raises(
            TypeError, match=rf"^x has shape \(4, 32\) and dtype float32: axis must be an int, got {axis}$"
        ):
            mx.quantize(jnp.zeros((4, 32)), axis=axis)
    assert mx.quantize(jnp.zeros((32, 4)), axis=np.int64(0)).shape == (4, 32)
    with pytest.raises(TypeError, match=r"^dequantize: dtype is None; expected one of float32, bfloat16, float16$"):
        mx.dequantize(mx.quantize(jnp.zeros((4, 32))), None)
    with pytest.raises(TypeError, match=r"^mxfp8_matmul: out_dtype is None; expected one of float32, bfloat16"):
        mx.mxfp8_matmul(jnp.zeros((4, 32)), mx.quantize(jnp.zeros((8, 32))), out_dtype=None)


def test_mxarray_pytree_and_validation():
    a = mx.quantize(jnp.ones((3, 64)))
    leaves, treedef = jax.tree_util.tree_flatten(a)
    assert [leaf.dtype for leaf in leaves] == [jnp.float8_e4m3fn, jnp.uint8]
    b = jax.tree_util.tree_unflatten(treedef, leaves)
    assert b.shape == (3, 64) and b.dtype == jnp.float8_e4m3fn and b.nbytes == 3 * 64 + 3 * 2
    with pytest.raises(ValueError, match=r"scale has shape \(3, 3\).*needs scale shape \(3, 2\)"):
        mx.MXArray(a.data, jnp.zeros((3, 3), jnp.uint8))
    with pytest.raises(TypeError, match="data must be float8_e4m3fn"):
        mx.MXArray(jnp.zeros((3, 64)), a.scale)
    with pytest.raises(
        TypeError, match=r"MXArray.scale must be uint8 \(biased E8M0\), got float32 with shape \(3, 2\)"
    ):
        mx.MXArray(a.data, a.scale.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"MXArray.data shape \(3, 48\): the last axis must be a multiple of 32"):
        mx.MXArray(jnp.zeros((3, 48), jnp.float8_e4m3fn), jnp.zeros((3, 1), jnp.uint8))


def test_fused_round_trip_keeps_the_e4m3_rounding():
    """XLA:GPU drops convert(f32 -> f8 -> f32) pairs when allowed excess precision (its default):
    on an H100 a fused jit(dequantize(quantize(x))) returned x unchanged until dequantize put its
    inputs behind an optimization barrier (benchmarks/check_fused_roundtrip.py). XLA:CPU does not
    fold them, so this test checks the barrier is there and the fused result equals the split one."""
    jaxpr = jax.make_jaxpr(lambda v: mx.dequantize(mx.quantize(v)))(jnp.ones((2, 64)))
    assert "optimization_barrier" in str(jaxpr)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 64)), jnp.float32)
    fused = jax.jit(lambda v: mx.dequantize(mx.quantize(v)))(x)
    split = mx.dequantize(jax.jit(mx.quantize)(x))
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(split))


@pytest.mark.parametrize("jit", [False, True])
def test_scale_to_factor_is_the_power_of_two_of_every_normal_byte(jit):
    scale = np.arange(1, 256, dtype=np.uint8)  # byte 0 is the float32 subnormal 2**-127: exact only on GPUs
    fn = jax.jit(numerics.scale_to_factor) if jit else numerics.scale_to_factor
    got = np.asarray(fn(jnp.asarray(scale)))
    want = np.ldexp(np.float32(1), scale[:-1].astype(np.int32) - 127).astype(np.float32)
    np.testing.assert_array_equal(got[:-1], want)
    assert np.isnan(got[-1])  # byte 255: E8M0 NaN
