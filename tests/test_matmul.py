"""Emulation matmul against a float64 NumPy product of the dequantized operands."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import reference

import mxfp8_xla as mx
from mxfp8_xla.ste import mxfp8_linear_ste


def reference_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xd = reference.dequantize(*reference.quantize(x))
    wd = reference.dequantize(*reference.quantize(w))
    return xd @ wd.T


def rel_err(got, want) -> float:
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 2, 3)])
def test_float32_out_matches_float64(lead, rng):
    x = (rng.standard_normal((*lead, 96)) * 3).astype(np.float32)
    w = (rng.standard_normal((40, 96)) * 0.05).astype(np.float32)
    wq = mx.quantize(w)
    want = reference_matmul(x, w)
    for fn in (mx.mxfp8_matmul, jax.jit(mx.mxfp8_matmul, static_argnames=("out_dtype", "backend"))):
        got = fn(x, wq, out_dtype=jnp.float32)
        assert got.shape == (*lead, 40) and got.dtype == jnp.float32
        assert rel_err(got, want) < 1e-6


def test_bfloat16_out_within_bf16_rounding(rng):
    x = rng.standard_normal((16, 256)).astype(np.float32)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    got = np.asarray(mx.mxfp8_matmul(jnp.asarray(x, jnp.bfloat16), mx.quantize(w)), np.float64)
    want = reference_matmul(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), w)
    # One bf16 rounding of a float32 result: |err| <= 2**-8 |want| (plus float32 accumulation slack).
    assert np.all(np.abs(got - want) <= 2.0**-8 * np.abs(want) + 1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(got, want.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64))


def test_prequantized_x_and_vmap(rng):
    x = rng.standard_normal((4, 3, 64)).astype(np.float32)
    wq = mx.quantize(rng.standard_normal((8, 64)).astype(np.float32))
    direct = mx.mxfp8_matmul(x, wq, out_dtype=jnp.float32)
    via_mx = mx.mxfp8_matmul(mx.quantize(x), wq, out_dtype=jnp.float32)
    mapped = jax.vmap(lambda xi: mx.mxfp8_matmul(xi, wq, out_dtype=jnp.float32))(x)
    np.testing.assert_array_equal(np.asarray(direct), np.asarray(via_mx))
    np.testing.assert_array_equal(np.asarray(direct), np.asarray(mapped))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_makes_nan_outputs(bad, dtype, rng):
    """A non-finite value in x makes its row NaN, one in w its column; the other outputs stay finite. Infinity
    against a zero weight gives NaN too, as in float arithmetic."""
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    x[0, 5], w[2, 40] = bad, bad
    w[3] = 0.0
    x[1, 40] = np.inf
    matmul = jax.jit(mx.mxfp8_matmul, static_argnames=("out_dtype", "backend"))
    for fn in (mx.mxfp8_matmul, matmul):
        out = np.asarray(fn(jnp.asarray(x, dtype), mx.quantize(jnp.asarray(w, dtype)), out_dtype=dtype), np.float32)
        nan = np.zeros(out.shape, bool)
        nan[0], nan[:, 2], nan[1] = True, True, True  # row 1's infinity meets a finite or zero weight in every column
        np.testing.assert_array_equal(np.isnan(out), nan)


def test_bad_operands():
    wq = mx.quantize(jnp.ones((8, 64)))
    with pytest.raises(ValueError, match=r"x has shape \(2, 32\).*must equal K = 64"):
        mx.mxfp8_matmul(jnp.ones((2, 32)), wq)
    with pytest.raises(TypeError, match=r"w must be an MXArray \[N, K\] \(mxfp8_xla.quantize\(w\).*shape \(8, 64\)"):
        mx.mxfp8_matmul(jnp.ones((2, 64)), jnp.ones((8, 64)))
    with pytest.raises(ValueError, match="w must be 2-D"):
        mx.mxfp8_matmul(jnp.ones((2, 64)), mx.quantize(jnp.ones((2, 8, 64))))
    with pytest.raises(ValueError, match="unknown MXFP8 backend 'cuda'"):
        mx.mxfp8_matmul(jnp.ones((2, 64)), wq, backend="cuda")
    with pytest.raises(TypeError, match="int8"):
        mx.mxfp8_matmul(jnp.ones((2, 64), jnp.int8), wq)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int32, jnp.bool_, jnp.uint8])
def test_an_integer_output_dtype_is_refused_everywhere(dtype):
    """An integer output would turn NaN and infinity into finite numbers: every entry point refuses it."""
    x = jnp.full((2, 64), jnp.nan, jnp.bfloat16)
    wq = mx.quantize(jnp.ones((8, 64)))
    name = jnp.dtype(dtype).name
    with pytest.raises(TypeError, match=f"mxfp8_matmul: out_dtype is {name}; expected one of float32"):
        mx.mxfp8_matmul(x, wq, out_dtype=dtype)
    with pytest.raises(TypeError, match=f"add_rms_norm_matmul: out_dtype is {name}"):
        mx.add_rms_norm_matmul(x, x, jnp.ones(64), wq, eps=1e-6, out_dtype=dtype)
    with pytest.raises(TypeError, match=f"mxfp8_linear_ste: out_dtype is {name}"):
        mxfp8_linear_ste(x, jnp.ones((64, 8)), out_dtype=dtype)
    with pytest.raises(TypeError, match=f"dequantize: dtype is {name}"):
        mx.dequantize(mx.quantize(x), dtype)


def test_float64_output_is_refused_with_a_hint():
    with pytest.raises(TypeError, match="out_dtype is float64.*float64 is not supported: use float32"):
        mx.mxfp8_matmul(jnp.ones((2, 64)), mx.quantize(jnp.ones((8, 64))), out_dtype=np.float64)
