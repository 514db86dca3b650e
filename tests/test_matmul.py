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


def test_an_mxarray_operand_gets_a_zero_cotangent(rng):
    """The quantized weight is frozen: its cotangent is an MXArray of zero codes and float0 scales, not an error."""
    x = jnp.asarray(rng.standard_normal((8, 128)), jnp.float32)
    w = mx.quantize(jnp.asarray(rng.standard_normal((64, 128)), jnp.float32))
    y, vjp = jax.vjp(lambda x, w: mx.mxfp8_matmul(x, w, out_dtype=jnp.float32), x, w)
    dx, dw = vjp(jnp.ones_like(y))
    w_hat = np.asarray(mx.dequantize(w, jnp.float32), np.float64)
    np.testing.assert_allclose(np.asarray(dx, np.float64), np.ones((8, 64)) @ w_hat, rtol=1e-5, atol=1e-5)
    assert isinstance(dw, mx.MXArray) and dw.scale.dtype == jax.dtypes.float0
    assert not np.any(np.asarray(dw.data, np.float32))


def test_a_function_of_mxarrays_exports_and_serializes(rng):
    """jax.export round trip of a function taking and returning MXArrays (its pytree registered for serialization)."""
    x = jnp.asarray(rng.standard_normal((8, 128)), jnp.float32)
    w = mx.quantize(jnp.asarray(rng.standard_normal((64, 128)), jnp.float32))
    mm = lambda x, w: mx.mxfp8_matmul(x, w, out_dtype=jnp.float32)  # noqa: E731
    back = jax.export.deserialize(jax.export.export(jax.jit(mm))(x, w).serialize())
    np.testing.assert_array_equal(np.asarray(back.call(x, w)), np.asarray(mm(x, w)))
    q = jax.export.deserialize(jax.export.export(jax.jit(mx.quantize))(x).serialize()).call(x)
    assert isinstance(q, mx.MXArray)
    np.testing.assert_array_equal(np.asarray(q.scale), np.asarray(mx.quantize(x).scale))


def test_inference_hessian_vector_product_is_the_straight_through_one(rng):
    """grad of grad through the inference product: 2 v @ W^T W with W the decoded weight."""
    x = jnp.asarray(rng.standard_normal((8, 128)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((8, 128)), jnp.float32)
    w = mx.quantize(jnp.asarray(0.1 * rng.standard_normal((64, 128)), jnp.float32))
    f = lambda x: jnp.sum(mx.mxfp8_matmul(x, w, out_dtype=jnp.float32) ** 2)  # noqa: E731
    hvp = np.asarray(jax.grad(lambda x: jnp.vdot(jax.grad(f)(x), v))(x), np.float64)
    w_hat = np.asarray(mx.dequantize(w, jnp.float32), np.float64)
    want = 2 * np.asarray(v, np.float64) @ w_hat.T @ w_hat
    assert np.max(np.abs(hvp - want)) <= 1e-5 * np.max(np.abs(want))
