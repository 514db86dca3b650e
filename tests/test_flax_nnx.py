"""NNX ``MXFP8Linear``: params, math, modes, nnx transforms, training, errors."""

from __future__ import annotations

from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref
from flax import nnx

from mxfp8_xla.flax import MXFP8Linear

BIAS_INIT = nnx.initializers.normal(0.5)


def _x(shape: tuple[int, ...], seed: int = 1) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape) * 2.0 ** rng.uniform(-3, 3, shape), jnp.float32)


def shapes_dtypes(tree: Any) -> Any:
    return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


def state_dict(module: nnx.Module) -> dict[str, Any]:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


@nnx.jit
def call(module: nnx.Module, x: jax.Array) -> jax.Array:
    return module(x)


def test_init_param_names_shapes_dtypes_and_draws() -> None:
    infer = MXFP8Linear(96, 40, rngs=nnx.Rngs(0))
    train = MXFP8Linear(96, 40, mode="train", param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    linear = nnx.Linear(96, 40, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert shapes_dtypes(state_dict(infer)) == {
        "kernel_q": ((40, 96), "float8_e4m3fn"),
        "kernel_scale": ((40, 3), "uint8"),
        "bias": ((40,), "float32"),
    }
    assert shapes_dtypes(state_dict(train)) == shapes_dtypes(state_dict(linear))
    assert all(isinstance(v, nnx.Param) for _, v in nnx.iter_graph(infer) if isinstance(v, nnx.Variable))
    # Train mode draws nnx.Linear's kernel; inference mode stores that draw quantized.
    np.testing.assert_array_equal(train.kernel[...], linear.kernel[...])
    elements, scale = ref.quantize_values(np.asarray(nnx.Linear(96, 40, rngs=nnx.Rngs(0)).kernel[...]), axis=0)
    np.testing.assert_array_equal(np.asarray(infer.kernel_q[...], np.float64), elements)
    np.testing.assert_array_equal(np.asarray(infer.kernel_scale[...]), scale)
    assert MXFP8Linear(64, 8, use_bias=False, rngs=nnx.Rngs(0)).bias is None


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_forward_matches_float64_numpy_reference(mode: str) -> None:
    layer = MXFP8Linear(64, 24, mode="train", bias_init=BIAS_INIT, rngs=nnx.Rngs(3))
    kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    if mode == "inference":
        layer = MXFP8Linear(64, 24, bias_init=BIAS_INIT, rngs=nnx.Rngs(3))  # same draw, quantized
    for xshape in [(64,), (2, 3, 64)]:
        x = _x(xshape)
        y = call(layer, x)
        assert y.shape == (*xshape[:-1], 24) and y.dtype == jnp.float32
        ref.assert_linear_matches(y, np.asarray(x), kernel, bias)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_inference_equals_train_bit_for_bit(dtype: Any) -> None:
    x = _x((4, 64))
    train = MXFP8Linear(64, 16, mode="train", dtype=dtype, bias_init=BIAS_INIT, rngs=nnx.Rngs(0))
    linear = nnx.Linear(64, 16, dtype=dtype, rngs=nnx.Rngs(1))
    linear.kernel[...], linear.bias[...] = train.kernel[...], train.bias[...]
    infer = MXFP8Linear.from_linear(linear)
    assert infer.mode == "inference" and infer.dtype == dtype
    y_train, y_infer = call(train, x), call(infer, x)
    assert y_train.dtype == y_infer.dtype == (dtype or jnp.float32)
    np.testing.assert_array_equal(np.asarray(y_train, np.float32), np.asarray(y_infer, np.float32))
    np.testing.assert_array_equal(np.asarray(infer(x), np.float32), np.asarray(y_infer, np.float32))


def test_split_merge_state_and_jax_jit() -> None:
    x = _x((3, 64))
    layer = MXFP8Linear(64, 16, bias_init=BIAS_INIT, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(layer)
    y = call(layer, x)

    @jax.jit
    def pure(state: nnx.State, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(x)

    np.testing.assert_array_equal(pure(state, x), y)
    np.testing.assert_array_equal(jax.jit(jax.vmap(pure, in_axes=(None, 0)))(state, x), y)
    merged = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(call(merged, x), y)
    # The state serializes with flax.serialization, keeping fp8/uint8.
    pure_state = nnx.to_pure_dict(nnx.state(layer))
    restored = flax.serialization.from_bytes(pure_state, flax.serialization.to_bytes(pure_state))
    assert shapes_dtypes(restored) == shapes_dtypes(pure_state)
    nnx.replace_by_pure_dict(state, restored)
    np.testing.assert_array_equal(call(nnx.merge(graphdef, state), x), y)


def test_nnx_grad_in_train_mode_is_straight_through() -> None:
    x, g = _x((5, 64)), _x((5, 16), seed=2)
    layer = MXFP8Linear(64, 16, mode="train", rngs=nnx.Rngs(0))
    kernel = np.asarray(layer.kernel[...])

    @nnx.jit
    def grads(layer: MXFP8Linear) -> nnx.State:
        return nnx.grad(lambda m: jnp.sum(m(x) * g))(layer)

    gs = grads(layer)
    xd = ref.dequantize_values(*ref.quantize_values(np.asarray(x)))
    g64 = np.asarray(g, np.float64)
    dk_ref = xd.T @ g64
    tol = 2.0**-21 * (np.abs(xd).T @ np.abs(g64)) + 1e-30
    np.testing.assert_array_less(np.abs(np.asarray(gs["kernel"][...], np.float64) - dk_ref), tol)
    np.testing.assert_allclose(np.asarray(gs["bias"][...]), g64.sum(0), rtol=1e-6)
    assert not np.allclose(kernel, 0)


def test_optimizer_steps_reduce_loss() -> None:
    k = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(k[0], (128, 64))
    y = jnp.tanh(x @ (jax.random.normal(k[1], (64, 32)) / 8)) @ (jax.random.normal(k[2], (32, 4)) / 4)

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.fc1 = MXFP8Linear(64, 64, mode="train", rngs=rngs)
            self.fc2 = MXFP8Linear(64, 4, mode="train", rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.fc2(nnx.relu(self.fc1(x)))

    model = MLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model: MLP, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(30)]
    assert losses[-1] < 0.1 * losses[0], losses


def test_an_adapter_trains_on_a_frozen_inference_layer() -> None:
    """docs/layers.md's filter: an Optimizer over every Param but the quantized weight's (uint8 scales have no
    gradient), gradients reaching the adapter through the inference layer's straight-through input gradient."""

    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.base = MXFP8Linear(64, 32, rngs=rngs)
            self.adapter = nnx.Linear(32, 8, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.adapter(self.base(x))

    model = Model(nnx.Rngs(0))
    frozen_q, frozen_scale = (np.asarray(v[...]) for v in (model.base.kernel_q, model.base.kernel_scale))
    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("kernel_q")), nnx.Not(nnx.PathContains("kernel_scale")))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable)
    x = jax.random.normal(jax.random.key(1), (16, 64))
    y = jax.random.normal(jax.random.key(2), (16, 8))

    @nnx.jit
    def step(model: Model, optimizer: nnx.Optimizer) -> jax.Array:
        loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)  # noqa: E731
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0]
    assert np.array_equal(np.asarray(model.base.kernel_q[...]).view(np.uint8), frozen_q.view(np.uint8))
    assert np.array_equal(np.asarray(model.base.kernel_scale[...]), frozen_scale)


def test_errors_name_layer_tensor_shape_dtype() -> None:
    layer = MXFP8Linear(64, 8, rngs=nnx.Rngs(0))
    for fn in (layer, lambda x: call(layer, x)):
        with pytest.raises(
            ValueError,
            match=r"MXFP8Linear\(64, 8\): input has shape \(2, 96\) and dtype float32; "
            r"expected last dimension 64",
        ):
            fn(jnp.ones((2, 96)))
    for mode in ("inference", "train"):
        with pytest.raises(ValueError, match=r"MXFP8Linear\(48, 8\): in_features has K = 48 .*multiple of 32"):
            MXFP8Linear(48, 8, mode=mode, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"param_dtype is float64"):
        MXFP8Linear(64, 8, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"dtype is float64"):
        MXFP8Linear(64, 8, dtype=jnp.float64, rngs=nnx.Rngs(0))
    with (
        jax.enable_x64(True),
        pytest.raises(TypeError, match=r"input with shape \(2, 64\) has dtype float64"),
    ):
        call(layer, jnp.ones((2, 64), jnp.float64))
    layer.kernel_q = nnx.Param(layer.kernel_q[...].astype(jnp.float32))
    with pytest.raises(TypeError, match=r"'kernel_q' with shape \(8, 64\) has dtype float32; expected float8_e4m3fn"):
        call(layer, jnp.ones((2, 64)))
