"""Gradients through the inference product: straight-through with respect to a float activation, zero with respect
to the frozen MXFP8 operands (mxfp8_xla.matmul's custom_vjp rules)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import H100

import mxfp8_xla as mx
from mxfp8_xla import norm
from mxfp8_xla.backends import FUSED_ADD_NORM
from mxfp8_xla.backends.flashinfer import prepare_weight
from mxfp8_xla.backends.select import override_capability
from mxfp8_xla.flax import MXFP8Dense, quantize_params
from mxfp8_xla.ste import mxfp8_linear_ste


def _operands(x_shape, n, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    kernel = jnp.asarray(rng.standard_normal((x_shape[-1], n)) * 0.05, jnp.float32)  # [K, N], as the STE takes it
    return x, kernel, mx.quantize(kernel.T)


def _check_dx(dx, g, w):
    """dx against g @ dequantize(w) computed in float64 independently of the library's rule: within float32's
    accumulation bound (K ulps of the sum of |terms|) plus the rounding to dx's dtype."""
    g64, w64 = np.asarray(g, np.float64), np.asarray(mx.dequantize(w, jnp.float32), np.float64)
    want, size = g64 @ w64, np.abs(g64) @ np.abs(w64)
    out_ulp = {jnp.float32: 2.0**-24, jnp.bfloat16: 2.0**-8, jnp.float16: 2.0**-11}[jnp.dtype(dx.dtype).type]
    bound = w64.shape[0] * 2.0**-24 * size + out_ulp * np.abs(want) + 1e-30
    assert np.all(np.abs(np.asarray(dx, np.float64) - want) <= bound)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("x_shape", [(64,), (5, 64), (2, 3, 64)])
def test_dx_is_straight_through_and_equals_the_ste(x_shape, dtype):
    x, kernel, w = _operands(x_shape, 96, dtype)
    g = jnp.asarray(np.random.default_rng(1).standard_normal((*x_shape[:-1], 96)), jnp.float32)
    for fn in (lambda x: mx.mxfp8_matmul(x, w, out_dtype=jnp.float32), jax.jit(lambda x: mx.mxfp8_matmul(x, w))):
        _, vjp = jax.vjp(fn, x)
        (dx,) = vjp(g.astype(fn(x).dtype))
        assert dx.dtype == x.dtype and dx.shape == x.shape
        _check_dx(dx, g.astype(fn(x).dtype), w)
    # the same dx as the train-mode STE on the float kernel that quantizes to w
    _, vjp_ste = jax.vjp(lambda x: mxfp8_linear_ste(x, kernel, out_dtype=jnp.float32), x)
    _, vjp_inf = jax.vjp(lambda x: mx.mxfp8_matmul(x, w, out_dtype=jnp.float32), x)
    np.testing.assert_array_equal(vjp_inf(g)[0], vjp_ste(g)[0])


def _dots(jaxpr):
    """Every dot_general equation in ``jaxpr`` and the jaxprs nested in its equations' params."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _dots(inner)


@pytest.mark.parametrize(
    "rows, out_dtype, operand",
    [(8, jnp.bfloat16, jnp.bfloat16), (8, jnp.float32, jnp.float32), (1, jnp.bfloat16, jnp.float32)],
)
def test_a_bf16_cotangent_multiplies_in_bf16_with_float32_accumulation(rows, out_dtype, operand):
    """A bf16 output's cotangent of several rows meets the weight decoded to bf16 (exact) in a bf16 x bf16 -> float32
    product, which the tensor cores run; a float32 one, or a single row (measured faster so), stays a float32
    product at Precision.HIGHEST."""
    x, _, w = _operands((rows, 64), 32, jnp.bfloat16)
    loss = lambda x: mx.mxfp8_matmul(x, w, out_dtype=out_dtype).astype(jnp.float32).sum()  # noqa: E731
    dots = [e for e in _dots(jax.make_jaxpr(jax.grad(loss))(x).jaxpr) if e.outvars[0].aval.shape == (rows, 64)]
    assert len(dots) == 1  # the backward product g [rows, 32] @ w_hat [32, 64]
    (dot,) = dots
    assert [v.aval.dtype for v in dot.invars] == [operand, operand]
    assert dot.params["preferred_element_type"] == jnp.float32
    precision = dot.params["precision"]
    assert (precision is not None and jax.lax.Precision.HIGHEST in tuple(precision)) == (operand == jnp.float32)


@pytest.mark.parametrize("rows, out_dtype, operand", [(8, jnp.bfloat16, jnp.bfloat16), (8, jnp.float32, jnp.float32)])
def test_the_ste_kernel_gradient_takes_the_same_products(rows, out_dtype, operand):
    """Train mode's dkernel = x_hat.T @ g follows the same rule: a bf16 cotangent of several rows meets the decoded
    activation in bf16 (exact) with float32 accumulation; a float32 one is a float32 product at HIGHEST."""
    x, kernel, _ = _operands((rows, 64), 32, jnp.bfloat16)
    loss = lambda kernel: mxfp8_linear_ste(x, kernel, out_dtype=out_dtype).astype(jnp.float32).sum()  # noqa: E731
    dots = [e for e in _dots(jax.make_jaxpr(jax.grad(loss))(kernel).jaxpr) if e.outvars[0].aval.shape == (64, 32)]
    assert len(dots) == 1  # the backward product x_hat [rows, 64] . g [rows, 32] over rows
    (dot,) = dots
    assert [v.aval.dtype for v in dot.invars] == [operand, operand]
    assert dot.params["preferred_element_type"] == jnp.float32
    precision = dot.params["precision"]
    assert (precision is not None and jax.lax.Precision.HIGHEST in tuple(precision)) == (operand == jnp.float32)


def test_dx_under_vmap_and_with_a_prepared_weight():
    x, _, w = _operands((4, 3, 64), 128)
    loss = lambda x, w: (mx.mxfp8_matmul(x, w, out_dtype=jnp.float32) ** 2).sum()  # noqa: E731
    want = jax.grad(loss)(x, w)
    np.testing.assert_array_equal(jax.vmap(jax.grad(loss), in_axes=(0, None))(x, w), want)
    np.testing.assert_array_equal(jax.jit(jax.grad(loss))(x, prepare_weight(w)), want)


def test_the_mxfp8_operands_are_frozen():
    """The weight's codes, and an MXArray activation's, get zero gradients (no fp8 gradient JAX would round)."""
    x, _, w = _operands((2, 64), 32)
    dw = jax.grad(lambda data: mx.mxfp8_matmul(x, mx.MXArray(data, w.scale)).astype(float).sum())(w.data)
    assert dw.dtype == w.data.dtype and not np.any(np.asarray(dw, np.float32))
    xq = mx.quantize(x)
    dxq = jax.grad(lambda data: mx.mxfp8_matmul(mx.MXArray(data, xq.scale), w).astype(float).sum())(xq.data)
    assert not np.any(np.asarray(dxq, np.float32))
    g = jax.grad(lambda s: (s * mx.mxfp8_matmul(xq, w, out_dtype=jnp.float32)).sum())(2.0)
    assert np.isfinite(g) and g != 0


def test_torch_backend_gradient_is_straight_through():
    x, _, w = _operands((4, 64), 64)
    grad = lambda backend: jax.grad(  # noqa: E731
        lambda x: mx.mxfp8_matmul(x, w, out_dtype=jnp.float32, backend=backend).sum()
    )(x)
    np.testing.assert_array_equal(grad("torch"), grad("emulation"))


def test_a_frozen_inference_layer_backpropagates_like_its_train_mode():
    """An adapter trained on a quantized base: dL/dx through an inference MXFP8Dense equals train mode's."""
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 128)), jnp.float32)
    train = MXFP8Dense(64, mode="train")
    train_params = train.init(jax.random.key(0), x)
    inference_params, _ = quantize_params(train_params)
    inference = MXFP8Dense(64)
    grad = lambda layer, params: jax.grad(lambda x: jnp.sum(jnp.sin(layer.apply(params, x))))(x)  # noqa: E731
    np.testing.assert_array_equal(grad(inference, inference_params), grad(train, train_params))


def test_a_fused_add_norm_kernel_is_differentiated_as_its_composition(monkeypatch):
    """Where a backend runs the add, the norm and the product as one kernel, the gradients are the composition's:
    here an emulated 'fused' kernel on the emulation backend, against the composed path."""

    def fused(x, delta, norm_weight, eps, w, out_dtype):
        h = norm.add(x, delta)
        return mx.mxfp8_matmul(norm.rms_norm(h, norm_weight, eps), w, out_dtype=out_dtype), h

    rng = np.random.default_rng(3)
    x, delta = (jnp.asarray(rng.standard_normal((2, 256)), jnp.float32) for _ in range(2))
    norm_weight = jnp.asarray(rng.standard_normal(256), jnp.float32)
    w = mx.quantize(jnp.asarray(rng.standard_normal((128, 256)), jnp.float32))

    def loss(x, delta, norm_weight):
        y, h = mx.add_rms_norm_matmul(x, delta, norm_weight, w, eps=1e-6, out_dtype=jnp.float32)
        return jnp.sum(y**2) + jnp.sum(0.3 * h)

    composed = jax.grad(loss, argnums=(0, 1, 2))(x, delta, norm_weight)
    monkeypatch.setitem(FUSED_ADD_NORM, "emulation", (lambda *_: True, fused))
    for got, want in zip(jax.grad(loss, argnums=(0, 1, 2))(x, delta, norm_weight), composed, strict=True):
        np.testing.assert_array_equal(got, want)
    dw = jax.grad(lambda d: mx.add_rms_norm_matmul(x, delta, norm_weight, mx.MXArray(d, w.scale), eps=1e-6)[0].sum())(
        w.data
    )
    assert not np.any(np.asarray(dw, np.float32))


def test_hopper_routes_trace_their_gradients():
    """On the hopper backend (traced on CPU as an SM90 GPU), the GEMV kernel and the fused add-and-norm kernel run
    the forward pass and the straight-through rule the backward pass."""
    x = jnp.ones((1, 512), jnp.bfloat16)
    w = mx.quantize(jnp.ones((256, 512), jnp.float32))
    norm_weight = jnp.ones(512, jnp.bfloat16)
    with override_capability(H100):
        for fn in (
            lambda x: mx.mxfp8_matmul(x, w, backend="hopper"),
            lambda x: mx.add_rms_norm_matmul(x, x, norm_weight, w, eps=1e-6, backend="hopper")[0],
        ):
            jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, fn=fn: fn(x).astype(jnp.float32).sum()))(x))
            assert "mxfp8_gemv" in jaxpr and "dot_general" in jaxpr
