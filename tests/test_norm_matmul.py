"""add_rms_norm_matmul and mxfp8_xla.norm: the formula against NumPy, its independence from XLA's fusion, the op
against its parts, its errors, and its hopper route (traced on CPU; the kernel runs on the GPU)."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import ADD_NORM_KERNELS, H100
from hypothesis import given, settings
from hypothesis import strategies as st

from mxfp8_xla import MXArray, add_rms_norm_matmul, mxfp8_matmul, norm, quantize
from mxfp8_xla.backends import hopper, ptx_launch
from mxfp8_xla.backends.select import override_capability

EPS = 1e-5
STRICT = {"xla_allow_excess_precision": False}


def bf16(a) -> np.ndarray:
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def operands(k: int, seed: int = 0, rows: tuple[int, ...] = (1,), scale: float = 1.0):
    kx, kd, kg = jax.random.split(jax.random.key(seed), 3)
    x = (jax.random.normal(kx, (*rows, k)) * scale).astype(jnp.bfloat16)
    delta = (jax.random.normal(kd, (*rows, k)) * 0.5 * scale).astype(jnp.bfloat16)
    g = (1 + 0.1 * jax.random.normal(kg, (k,))).astype(jnp.bfloat16)
    return x, delta, g


def weight(n: int, k: int, seed: int = 3) -> MXArray:
    return quantize(jax.random.normal(jax.random.key(seed), (n, k)) * 0.05)


@settings(max_examples=25, deadline=None)
@given(k=st.sampled_from([32, 96, 512, 4096]), seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1.0, 300.0]))
def test_the_formula_against_numpy(k, seed, scale):
    x, delta, g = operands(k, seed, scale=scale)
    h = np.asarray(jax.jit(norm.add)(x, delta), np.float32)
    np.testing.assert_array_equal(h, bf16(np.asarray(x, np.float32) + np.asarray(delta, np.float32)))
    r = np.float32(1) / np.sqrt(np.mean(h * h, dtype=np.float32) + np.float32(EPS))
    want = bf16(np.asarray(g, np.float32) * bf16(h * r))
    got = np.asarray(jax.jit(norm.rms_norm, static_argnums=2)(jnp.asarray(h, jnp.bfloat16), g, EPS), np.float32)
    # rsqrt and the order of the float32 sum may move a bf16 rounding by one step, no more
    np.testing.assert_allclose(got, want, rtol=2**-7, atol=0)


def test_the_result_does_not_depend_on_what_xla_fuses():
    x, delta, g = operands(512, 1)
    f = lambda x, d, g: norm.rms_norm(norm.add(x, d), g, EPS)  # noqa: E731
    default, strict = jax.jit(f)(x, delta, g), jax.jit(f, compiler_options=STRICT)(x, delta, g)
    np.testing.assert_array_equal(np.asarray(default, np.float32), np.asarray(strict, np.float32))


def test_dtypes_follow_the_operands():
    x, delta, g = operands(64)
    assert norm.add(x.astype(jnp.float32), delta.astype(jnp.float32)).dtype == jnp.float32
    assert norm.rms_norm(x, g.astype(jnp.float32), EPS).dtype == jnp.float32
    assert norm.rms_norm(x, g, EPS).dtype == jnp.bfloat16


@pytest.mark.parametrize("rows", [(1,), (3,), (2, 5)])
def test_the_op_is_its_parts(rows):
    x, delta, g = operands(256, 2, rows)
    w = weight(64, 256)
    op = jax.jit(lambda *a: add_rms_norm_matmul(*a, eps=EPS, out_dtype=jnp.float32))
    y, h = op(x, delta, g, w)
    h_want = norm.add(x, delta)
    y_want = mxfp8_matmul(norm.rms_norm(h_want, g, EPS), w, out_dtype=jnp.float32)
    assert y.shape == (*rows, 64) and y.dtype == jnp.float32 and h.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(h, np.float32), np.asarray(h_want, np.float32))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_want))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_sum_makes_every_output_nan(bad):
    x, delta, g = operands(256)
    delta = delta.at[0, 7].set(bad)
    y, h = add_rms_norm_matmul(x, delta, g, weight(32, 256), eps=EPS)
    assert not np.isfinite(np.asarray(h, np.float32)[0, 7])
    assert np.all(np.isnan(np.asarray(y, np.float32)))


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda x, d, g, w: (x, d[:, :128], g, w), ValueError, "delta must have x's shape and dtype"),
        (lambda x, d, g, w: (x, d.astype(jnp.float32), g, w), ValueError, "delta must have x's shape and dtype"),
        (
            lambda x, d, g, w: (x, d, g[:128], w),
            ValueError,
            r"norm_weight must be a float32, bfloat16 or float16 array \[256\] \(x's last axis\), got \(128,\) "
            "bfloat16",
        ),
        (
            lambda x, d, g, w: (x, d, g.astype(jnp.int32), w),
            ValueError,
            r"norm_weight must be a float32, bfloat16 or float16 array \[256\] .*, got \(256,\) int32",
        ),
        (
            lambda x, d, g, w: (x, d, g.astype(jnp.float8_e4m3fn), w),
            ValueError,
            r"norm_weight must be a float32, bfloat16 or float16 array .* float8_e4m3fn",
        ),
        (
            lambda x, d, g, w: (x, d, g, weight(32, 128)),
            ValueError,
            r"w must be \[N, 256\] \(K = x's last axis\), got shape \(32, 128\)",
        ),
        (lambda x, d, g, w: (x, d, g, jnp.ones((32, 256))), TypeError, r"w must be an MXArray \[N, 256\]"),
        (
            lambda x, d, g, w: (x, d.tolist(), g, w),
            TypeError,
            r"delta must be an array \(jnp.asarray makes one\), got list",
        ),
        (
            lambda x, d, g, w: (x, d, 1.0, w),
            TypeError,
            r"norm_weight must be an array \(jnp.asarray makes one\), got float",
        ),
    ],
)
def test_bad_operands_are_named(change, error, message):
    x, delta, g = operands(256)
    with pytest.raises(error, match=message):
        add_rms_norm_matmul(*change(x, delta, g, weight(32, 256)), eps=EPS)


def test_an_unknown_backend_is_refused():
    x, delta, g = operands(256)
    with pytest.raises(ValueError, match="unknown MXFP8 backend"):
        add_rms_norm_matmul(x, delta, g, weight(32, 256), eps=EPS, backend="nope")


def launches(fn, *args) -> list[str]:
    with override_capability(H100):
        return ptx_launch.traced_launches(fn, *args)


@pytest.mark.parametrize("out_dtype, suffix", [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")])
@pytest.mark.parametrize("x_dtype, norm_dtype, name", ADD_NORM_KERNELS)
def test_hopper_takes_one_bf16_or_float32_row_in_one_launch(monkeypatch, out_dtype, suffix, x_dtype, norm_dtype, name):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, delta, g = operands(4096)
    x, delta, g = x.astype(x_dtype), delta.astype(x_dtype), g.astype(norm_dtype)
    w = weight(6144, 4096)
    fn = lambda x, d, g: add_rms_norm_matmul(x, d, g, w, eps=EPS, out_dtype=out_dtype, backend="auto")  # noqa: E731
    assert launches(fn, x, delta, g) == [f"mxfp8_gemv_split_c1_r4_{name}_{suffix}"]
    with override_capability(H100):
        y, h = jax.make_jaxpr(fn)(x, delta, g).out_avals
    assert (y.shape, y.dtype, h.shape, h.dtype) == ((1, 6144), out_dtype, (1, 4096), x_dtype)


@pytest.mark.parametrize("rows, dtype", [((2,), jnp.bfloat16), ((1,), jnp.float16)], ids=["two rows", "float16 row"])
def test_hopper_leaves_the_norm_to_xla_for_other_activations(monkeypatch, rows, dtype):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, delta, g = (a.astype(dtype) if a.ndim > 1 else a for a in operands(4096, rows=rows))
    w = weight(6144, 4096)
    names = launches(lambda x, d, g: add_rms_norm_matmul(x, d, g, w, eps=EPS, backend="auto"), x, delta, g)
    assert not any("addnorm" in n for n in names)


def test_under_vmap_the_rows_take_the_unfused_path(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, delta, g = operands(4096, rows=(8, 1))
    w = weight(6144, 4096)
    per_row = jax.vmap(lambda x, d: add_rms_norm_matmul(x, d, g, w, eps=EPS, backend="auto"))
    assert not any("addnorm" in n for n in launches(per_row, x, delta))
    with override_capability(H100):
        y, h = jax.eval_shape(per_row, x, delta)
    assert y.shape == (8, 1, 6144) and h.shape == (8, 1, 4096)
