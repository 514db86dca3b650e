"""The DLPack bridge (mxfp8_xla.interop.torch_callback) on CPU: the same code path as on GPU."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import mxfp8_xla as mx
from mxfp8_xla import interop
from mxfp8_xla.interop import CALL_COUNTS, rowwise_vmap, torch_callback

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.float8_e4m3fn, jnp.float8_e5m2, jnp.uint8, jnp.int32]


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.uint8) if a.dtype.itemsize == 1 else a.view(f"u{a.dtype.itemsize}")


def _random(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.asarray(rng.integers(0, 120, size=shape), dtype)
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * 3).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("fp8_via_uint8", [True, False])
def test_round_trip_bits(dtype, fp8_via_uint8):
    x = _random((3, 64), dtype)
    seen = {}

    def clone(t):
        seen["dtype"] = t.dtype
        return t.clone()

    f = jax.jit(
        lambda x: torch_callback(
            clone, jax.ShapeDtypeStruct(x.shape, x.dtype), x, fp8_via_uint8=fp8_via_uint8, name="clone"
        )
    )
    y = f(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(_bits(y), _bits(x))
    assert seen["dtype"] == interop.torch_dtype(x.dtype)  # torch sees the real dtype either way


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float8_e4m3fn, jnp.uint8])
def test_zero_copy_and_in_place(dtype):
    """Inputs and outputs are XLA's own buffers: torch tensors alias their memory."""
    x = _random((4, 32), dtype)
    ptrs = {}

    def bridge(ctx, outs, xb):
        # A raw buffer_callback, to compare torch's data_ptr with XLA's buffer address.
        (ob,) = outs
        xt = torch.from_dlpack(xb)
        ot = torch.from_dlpack(ob)
        ptrs["in"] = (xt.data_ptr(), np.asarray(xb).ctypes.data)
        ptrs["out"] = (ot.data_ptr(), np.asarray(ob).ctypes.data)
        ot.copy_(xt)

    from jax.experimental.buffer_callback import buffer_callback

    y = jax.jit(buffer_callback(bridge, (jax.ShapeDtypeStruct(x.shape, x.dtype),)))(x)[0]
    np.testing.assert_array_equal(_bits(y), _bits(x))
    assert ptrs["in"][0] == ptrs["in"][1]
    assert ptrs["out"][0] == ptrs["out"][1]


def test_pass_out_writes_in_place():
    a = _random((5, 64), jnp.float32, 1)
    b = _random((7, 64), jnp.float32, 2)
    spec = jax.ShapeDtypeStruct((5, 7), jnp.float32)

    def mm(a, b, *, out):
        assert out.shape == (5, 7) and out.is_contiguous()
        torch.matmul(a, b.t(), out=out)

    y = jax.jit(lambda a, b: torch_callback(mm, spec, a, b, pass_out=True))(a, b)
    np.testing.assert_allclose(y, np.asarray(a) @ np.asarray(b).T, rtol=1e-5, atol=1e-5)


def test_pytree_outputs_and_rank3():
    x = _random((2, 3, 64), jnp.bfloat16)
    specs = {
        "double": jax.ShapeDtypeStruct(x.shape, jnp.float32),
        "bits": jax.ShapeDtypeStruct(x.shape, jnp.uint16),
    }

    def fn(t):
        return {"double": t.float() * 2, "bits": t.view(torch.uint16)}

    out = jax.jit(lambda x: torch_callback(fn, specs, x))(x)
    np.testing.assert_array_equal(out["double"], np.asarray(x, np.float32) * 2)
    np.testing.assert_array_equal(out["bits"], np.asarray(x).view(np.uint16))


def test_python_runs_on_every_cpu_execution():
    x = jnp.ones((2, 32))
    f = jax.jit(lambda x: torch_callback(lambda t: t + 1, jax.ShapeDtypeStruct(x.shape, x.dtype), x, name="cnt"))
    before = CALL_COUNTS["cnt"]
    for i in range(3):
        np.testing.assert_array_equal(f(x + i), np.full((2, 32), 2.0 + i))
    assert CALL_COUNTS["cnt"] - before == 3


def test_command_buffer_flag_is_harmless_on_cpu(monkeypatch):
    x = _random((2, 32), jnp.float32)
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    for flag in (True, False, None):
        y = jax.jit(lambda x, flag=flag: torch_callback(torch.neg, spec, x, command_buffer_compatible=flag))(x)
        np.testing.assert_array_equal(y, -x)
    monkeypatch.setenv(interop.COMMAND_BUFFER_ENV, "0")
    assert interop._command_buffer_default() is False
    monkeypatch.setenv(interop.COMMAND_BUFFER_ENV, "1")
    assert interop._command_buffer_default() is True


def _row_mm(a, b, **kw):
    spec = jax.ShapeDtypeStruct((a.shape[0], b.shape[0]), jnp.float32)
    return torch_callback(
        lambda a, b, *, out: torch.matmul(a, b.t(), out=out), spec, a, b, pass_out=True, name="rowmm", **kw
    )


def test_vmap_flatten_is_one_call():
    x = _random((4, 3, 32), jnp.float32, 3)
    w = _random((5, 32), jnp.float32, 4)
    f = jax.jit(jax.vmap(lambda x, w: _row_mm(x, w, row_argnums=(0,)), (0, None)))
    before = CALL_COUNTS["rowmm"]
    y = f(x, w)
    assert CALL_COUNTS["rowmm"] - before == 1  # B=4 rows flattened into one call
    np.testing.assert_allclose(y, np.einsum("bmk,nk->bmn", x, w), rtol=1e-5, atol=1e-5)


def test_nested_vmap_flatten():
    x = _random((2, 3, 4, 32), jnp.float32, 5)
    w = _random((6, 32), jnp.float32, 6)
    inner = jax.vmap(lambda x, w: _row_mm(x, w, row_argnums=(0,)), (0, None))
    y = jax.jit(jax.vmap(inner, (0, None)))(x, w)
    np.testing.assert_allclose(y, np.einsum("abmk,nk->abmn", x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape", [(0, 3, 32), (2, 0, 3, 32), (0, 2, 3, 32)], ids=["empty batch", "empty inner", "empty outer"]
)
def test_vmap_flatten_over_an_empty_batch(shape):
    """A batch of 0 has 0 rows in all; each element's M (3) still shapes the output (no division by the batch)."""
    x = _random(shape, jnp.float32, 3)
    w = _random((5, 32), jnp.float32, 4)
    f = lambda x, w: _row_mm(x, w, row_argnums=(0,))  # noqa: E731
    for _ in shape[:-2]:
        f = jax.vmap(f, (0, None))
    y = jax.jit(f)(x, w)
    assert y.shape == (*shape[:-1], 5) and y.dtype == jnp.float32
    w_q = mx.quantize(_random((48, 32), jnp.float32, 5))
    y = jax.vmap(lambda x: mx.mxfp8_matmul(x, w_q, backend="torch"))(jnp.zeros((0, 3, 32)))
    assert y.shape == (0, 3, 48)


def test_vmap_over_non_row_arg_falls_back_to_sequential(caplog):
    x = _random((3, 32), jnp.float32, 7)
    ws = _random((4, 5, 32), jnp.float32, 8)
    f = jax.jit(jax.vmap(lambda x, w: _row_mm(x, w, row_argnums=(0,)), (None, 0)))
    before = CALL_COUNTS["rowmm"]
    with caplog.at_level(logging.WARNING, logger="mxfp8_xla.interop"):
        y = f(x, ws)
    assert CALL_COUNTS["rowmm"] - before == 4  # one call per weight
    assert any("the batch of 4 runs one call per element" in r.getMessage() for r in caplog.records)  # not silent
    np.testing.assert_allclose(y, np.einsum("mk,bnk->bmn", x, ws), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["sequential", "expand_dims", "broadcast_all"])
def test_vmap_other_methods(method):
    x = _random((3, 2, 32), jnp.float32, 9)
    spec = jax.ShapeDtypeStruct((2, 32), jnp.float32)
    # an elementwise fn works for every method (expand_dims/broadcast_all hand it the batch axis)
    y = jax.jit(jax.vmap(lambda x: torch_callback(lambda t: t * 3, spec, x, vmap_method=method)))(x)
    np.testing.assert_allclose(y, np.asarray(x) * 3)


def test_rowwise_vmap_broadcasts_unmapped_row_args():
    def f(a, b):
        return a + b

    g = rowwise_vmap(f, (0, 1))
    a = jnp.arange(6.0).reshape(2, 3, 1)
    b = jnp.ones((3, 1))
    np.testing.assert_array_equal(jax.vmap(g, (0, None))(a, b), np.asarray(a) + 1)


def test_autodiff_raises_clear_error():
    x = _random((3, 32), jnp.float32)
    w = _random((4, 32), jnp.float32)
    with pytest.raises(TypeError, match=r"torch_callback\(rowmm\) is not differentiable.*custom_vjp"):
        jax.grad(lambda x: _row_mm(x, w, row_argnums=(0,)).sum())(x)
    # Differentiating something else in the same function is fine (zero tangents skip the bridge).
    g = jax.grad(lambda s: (s * jax.lax.stop_gradient(_row_mm(x, w, row_argnums=(0,)))).sum())(1.0)
    assert np.isfinite(g)


def test_errors():
    x = jnp.ones((2, 32))
    spec = jax.ShapeDtypeStruct((2, 32), jnp.float32)
    with pytest.raises(ValueError, match="needs row_argnums"):
        torch_callback(torch.neg, spec, x, vmap_method="flatten")
    with pytest.raises(ValueError, match="vmap_method must be one of"):
        torch_callback(torch.neg, spec, x, vmap_method="loop")
    with pytest.raises(ValueError, match="same axis-0 length"):
        torch_callback(torch.neg, jax.ShapeDtypeStruct((3, 32), jnp.float32), x, row_argnums=(0,))
    with pytest.raises(TypeError, match="no torch counterpart"):
        torch_callback(torch.neg, spec, jnp.ones((2, 32), jnp.complex64))
    bad = jax.jit(lambda x: torch_callback(lambda t: t[:1], spec, x, name="bad_shape"))
    with pytest.raises(Exception, match=r"torch_callback\(bad_shape\): output 0 is torch.float32\[1, 32\]"):
        bad(x)
    with pytest.raises(ValueError, match=r"torch_callback\(neg\): result_shape_dtypes has no outputs"):
        torch_callback(torch.neg, (), x)
    for argnums in ((1,), (0, 5)):
        with pytest.raises(ValueError, match=rf"row_argnums entry {argnums[-1]} must name an input with a row axis"):
            torch_callback(torch.add, spec, x, jnp.float32(1), row_argnums=argnums)
    two = jax.jit(lambda x: torch_callback(lambda t: (t, t), spec, x, name="two"))
    with pytest.raises(Exception, match=r"torch_callback\(two\): fn returned 2 tensors, expected 1"):
        two(x)


def test_rowwise_vmap_refuses_a_row_argument_without_a_row_axis():
    f = rowwise_vmap(lambda a, b: a * b, (0, 1))
    with pytest.raises(ValueError, match=r"rowwise_vmap: row argument 1 has shape \(\) \(no row axis\)"):
        jax.vmap(f)(jnp.ones((3, 2, 4)), jnp.ones(3))
