"""Linen ``MXFP8Dense``: params, math, modes, transformations, training, serialization, errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import reference as ref
from conftest import subprocess_env
from jax.sharding import PartitionSpec as P

from mxfp8_xla import BackendUnavailableError, quantize
from mxfp8_xla.flax import MXFP8Dense, quantize_params

KEY = jax.random.key(0)
BIAS_INIT = nn.initializers.normal(0.5)  # non-zero biases, so they are exercised


def _x(shape: tuple[int, ...], seed: int = 1) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape) * 2.0 ** rng.uniform(-3, 3, shape), jnp.float32)


def shapes_dtypes(tree: Any) -> Any:
    return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


def apply(model: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
    return jax.jit(model.apply)(variables, x)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_init_param_names_shapes_dtypes(param_dtype: Any) -> None:
    x = jnp.ones((2, 96))
    pd = str(jnp.dtype(param_dtype))
    v = jax.eval_shape(MXFP8Dense(40, param_dtype=param_dtype).init, KEY, x)
    assert shapes_dtypes(v) == {
        "params": {
            "kernel_q": ((40, 96), "float8_e4m3fn"),
            "kernel_scale": ((40, 3), "uint8"),
            "bias": ((40,), pd),
        }
    }
    v = jax.eval_shape(MXFP8Dense(40, mode="train", param_dtype=param_dtype).init, KEY, x)
    assert shapes_dtypes(v) == {"params": {"kernel": ((96, 40), pd), "bias": ((40,), pd)}}
    v = jax.eval_shape(MXFP8Dense(40, use_bias=False).init, KEY, x)
    assert set(v["params"]) == {"kernel_q", "kernel_scale"}


def test_init_draws_are_those_of_nn_dense() -> None:
    """Train mode draws nn.Dense's kernel; inference mode stores that draw quantized."""
    x = jnp.ones((3, 64))
    dense = jax.jit(nn.Dense(48).init)(KEY, x)["params"]
    train = jax.jit(MXFP8Dense(48, mode="train").init)(KEY, x)["params"]
    infer = jax.jit(MXFP8Dense(48).init)(KEY, x)["params"]
    np.testing.assert_array_equal(train["kernel"], dense["kernel"])
    elements, scale = ref.quantize_values(np.asarray(dense["kernel"]), axis=0)
    np.testing.assert_array_equal(np.asarray(infer["kernel_q"], np.float64), elements)
    np.testing.assert_array_equal(np.asarray(infer["kernel_scale"]), scale)


class MLP(nn.Module):
    """Two named layers; ``layer`` is nn.Dense or an MXFP8Dense partial."""

    layer: Callable[..., nn.Module]
    hidden: int = 128
    out: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(self.layer(self.hidden, name="fc1")(x))
        return self.layer(self.out, name="fc2")(h)


def mx(**kw: Any) -> Callable[..., nn.Module]:
    return lambda *a, **k: MXFP8Dense(*a, **kw, **k)


def test_swapping_dense_for_train_mode_keeps_the_param_tree(tmp_path: Any) -> None:
    x = _x((4, 64))
    dense_model, mx_model = MLP(nn.Dense), MLP(mx(mode="train"))
    dense_vars = jax.jit(dense_model.init)(KEY, x)
    mx_vars = jax.jit(mx_model.init)(KEY, x)
    assert jax.tree.structure(dense_vars) == jax.tree.structure(mx_vars)
    assert shapes_dtypes(dense_vars) == shapes_dtypes(mx_vars)
    # A checkpoint of the nn.Dense model loads into the MXFP8 model and vice versa.
    restored = flax.serialization.from_bytes(mx_vars, flax.serialization.to_bytes(dense_vars))
    jax.tree.map(np.testing.assert_array_equal, restored, dense_vars)
    y = apply(mx_model, restored, x)
    assert y.shape == (4, 8) and bool(jnp.all(jnp.isfinite(y)))
    back = flax.serialization.from_bytes(dense_vars, flax.serialization.to_bytes(mx_vars))
    apply(dense_model, back, x)


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_forward_matches_float64_numpy_reference(mode: str) -> None:
    x1 = _x((1, 64))
    p = jax.jit(MXFP8Dense(24, mode="train", bias_init=BIAS_INIT).init)(KEY, x1)
    kernel, bias = np.asarray(p["params"]["kernel"]), np.asarray(p["params"]["bias"])
    if mode == "inference":
        p = jax.jit(MXFP8Dense(24, bias_init=BIAS_INIT).init)(KEY, x1)  # the same draw, quantized
    fwd = jax.jit(MXFP8Dense(24, mode=mode).apply)
    for xshape in [(64,), (2, 3, 64)]:
        x = _x(xshape)
        y = fwd(p, x)
        assert y.shape == (*xshape[:-1], 24) and y.dtype == jnp.float32
        ref.assert_linear_matches(y, np.asarray(x), kernel, bias)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_inference_equals_train_bit_for_bit(dtype: Any) -> None:
    x = _x((3, 5, 64))
    train_model = MLP(mx(mode="train", dtype=dtype, bias_init=BIAS_INIT))
    infer_model = MLP(mx(mode="inference", dtype=dtype))
    train_vars = jax.jit(train_model.init)(KEY, x)
    infer_vars, report = quantize_params(train_vars)
    assert len(report.converted) == 2
    y_train, y_infer = apply(train_model, train_vars, x), apply(infer_model, infer_vars, x)
    assert y_train.dtype == y_infer.dtype == (dtype or jnp.float32)
    np.testing.assert_array_equal(np.asarray(y_train, np.float32), np.asarray(y_infer, np.float32))
    # ... and eagerly too (no outer jit).
    np.testing.assert_array_equal(np.asarray(infer_model.apply(infer_vars, x), np.float32), y_infer)


def test_output_dtype_promotion_like_nn_dense() -> None:
    cases = [
        (jnp.float32, jnp.float32, None),
        (jnp.bfloat16, jnp.bfloat16, None),
        (jnp.float32, jnp.bfloat16, None),
    ]
    cases += [(jnp.bfloat16, jnp.float32, jnp.float16), (jnp.int32, jnp.float32, None)]
    for x_dtype, param_dtype, dtype in cases:
        x = jnp.ones((2, 32), x_dtype)
        dense = nn.Dense(4, dtype=dtype, param_dtype=param_dtype)
        expected = jax.eval_shape(dense.init_with_output, KEY, x)[0].dtype
        for mode in ("inference", "train"):
            m = MXFP8Dense(4, dtype=dtype, param_dtype=param_dtype, mode=mode)
            got = jax.eval_shape(m.init_with_output, KEY, x)[0].dtype
            assert got == expected, (x_dtype, param_dtype, dtype, mode)


def test_jit_and_vmap() -> None:
    x = _x((6, 64))
    for mode in ("inference", "train"):
        model = MXFP8Dense(16, mode=mode)
        init, fwd = jax.jit(model.init), jax.jit(model.apply)
        v = init(KEY, x)
        y = fwd(v, x)
        y_rows = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(v, x)
        np.testing.assert_array_equal(y_rows, y)
    # vmap over an ensemble of inference parameter sets: the same fp8/uint8 params bit for bit;
    # outputs equal up to float32 accumulation order (XLA lowers it to a batched dot).
    keys = jax.random.split(KEY, 2)
    vs = jax.jit(jax.vmap(model.init, in_axes=(0, None)))(keys, x)
    ys = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(vs, x)
    for i in range(2):
        vi = init(keys[i], x)
        jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(a[i], b), vs, vi)
        np.testing.assert_allclose(ys[i], fwd(vi, x), rtol=1e-6, atol=1e-6)


class Block(nn.Module):
    mode: str

    @nn.compact
    def __call__(self, h: jax.Array, _: None) -> tuple[jax.Array, None]:
        return nn.relu(MXFP8Dense(64, mode=self.mode, bias_init=BIAS_INIT, name="dense")(h)), None


class Stack(nn.Module):
    """Three ``Block`` s through ``nn.scan`` (optionally ``nn.remat``), params stacked on axis 0."""

    mode: str
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        block = nn.remat(Block, prevent_cse=False) if self.remat else Block
        scan = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        h, _ = scan(self.mode, name="blocks")(x, None)
        return h


def _unrolled(mode: str, params: Any, x: jax.Array) -> jax.Array:
    layer = MXFP8Dense(64, mode=mode)
    for i in range(3):
        p = jax.tree.map(lambda a, i=i: a[i], params["params"]["blocks"]["dense"])
        x = nn.relu(layer.apply({"params": p}, x))
    return x


@pytest.fixture(scope="module")
def scanned_train_vars() -> Any:
    return jax.jit(Stack("train").init)(KEY, _x((4, 64)))


def test_scan_over_layers(scanned_train_vars: Any) -> None:
    x, train_vars = _x((4, 64)), scanned_train_vars
    assert shapes_dtypes(train_vars["params"]["blocks"]["dense"]) == {
        "kernel": ((3, 64, 64), "float32"),
        "bias": ((3, 64), "float32"),
    }
    unrolled = jax.jit(_unrolled, static_argnums=0)
    y_train = apply(Stack("train"), train_vars, x)
    np.testing.assert_array_equal(y_train, unrolled("train", train_vars, x))

    infer_vars, report = quantize_params(train_vars, stacked="*blocks*")
    assert [c.path for c in report.converted] == ["params/blocks/dense"]
    assert shapes_dtypes(infer_vars["params"]["blocks"]["dense"]) == {
        "kernel_q": ((3, 64, 64), "float8_e4m3fn"),
        "kernel_scale": ((3, 64, 2), "uint8"),
        "bias": ((3, 64), "float32"),
    }
    assert shapes_dtypes(jax.eval_shape(Stack("inference").init, KEY, x)) == shapes_dtypes(infer_vars)
    y_infer = apply(Stack("inference"), infer_vars, x)
    np.testing.assert_array_equal(y_infer, y_train)
    np.testing.assert_array_equal(y_infer, unrolled("inference", infer_vars, x))


def test_remat_inside_scan_gradients(scanned_train_vars: Any) -> None:
    """Gradients through nn.scan(nn.remat(block)) equal those of the unrolled loop."""
    x, train_vars = _x((4, 64)), scanned_train_vars
    remat = Stack("train", remat=True)
    np.testing.assert_array_equal(apply(remat, train_vars, x), apply(Stack("train"), train_vars, x))
    g_scan = jax.jit(jax.grad(lambda v: jnp.sum(remat.apply(v, x) ** 2)))(train_vars)
    g_loop = jax.jit(jax.grad(lambda v: jnp.sum(_unrolled("train", v, x) ** 2)))(train_vars)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_scan, g_loop)
    assert all(bool(jnp.any(g_scan["params"]["blocks"]["dense"]["kernel"][i] != 0)) for i in range(3))


@pytest.mark.parametrize("remat", [False, True], ids=["scan", "remat scan"])
def test_second_derivatives_through_scanned_train_layers_equal_the_unrolled_ones(
    scanned_train_vars: Any, remat: bool
) -> None:
    """grad of grad (a Hessian-vector product in the params and the input) through nn.scan of train-mode layers
    equals the unrolled loop's: the straight-through product's tangent survives the scan (docs/layers.md)."""
    x, train_vars = _x((4, 64)), scanned_train_vars
    keys = iter(jax.random.split(jax.random.key(7), 8))
    v_vars = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape, a.dtype) / 8, train_vars)
    v_x = jax.random.normal(next(keys), x.shape)

    def hvp(loss: Callable) -> Any:
        def along_v(v: Any, x: jax.Array) -> jax.Array:
            g_vars, g_x = jax.grad(loss, (0, 1))(v, x)
            leaves = jax.tree.leaves(jax.tree.map(jnp.vdot, g_vars, v_vars))
            return sum(leaves) + jnp.vdot(g_x, v_x)

        return jax.jit(jax.grad(along_v, (0, 1)))(train_vars, x)

    model = Stack("train", remat=remat)
    got = hvp(lambda v, x: jnp.sum(model.apply(v, x) ** 2))
    want = hvp(lambda v, x: jnp.sum(_unrolled("train", v, x) ** 2))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert float(jnp.max(jnp.abs(w))) > 0
        assert float(jnp.max(jnp.abs(g - w))) <= 1e-5 * float(jnp.max(jnp.abs(w)))


def _regression_data() -> tuple[jax.Array, jax.Array]:
    k = jax.random.split(jax.random.key(42), 3)
    x = jax.random.normal(k[0], (256, 64))
    a, b = jax.random.normal(k[1], (64, 32)) / 8, jax.random.normal(k[2], (32, 8)) / 4
    return x, jnp.tanh(x @ a) @ b


def _train_losses(model: nn.Module, steps: int) -> np.ndarray:
    x, y = _regression_data()
    params = jax.jit(model.init)(jax.random.key(1), x)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return np.array(losses)


def test_optax_training_reduces_loss_at_about_the_rate_of_nn_dense() -> None:
    """40 full-batch Adam steps (lr 3e-3) on a synthetic regression, same initial weights.

    Tolerance: at every step the MXFP8 loss is within [0.8, 1.35] x the nn.Dense loss
    (measured here: 0.995-1.03), and both end below 5% of their initial loss (measured ~3%).
    """
    dense = _train_losses(MLP(nn.Dense), 40)
    mxfp8 = _train_losses(MLP(mx(mode="train")), 40)
    ratio = mxfp8 / dense
    assert ratio.min() >= 0.8 and ratio.max() <= 1.35, ratio
    assert dense[-1] < 0.05 * dense[0] and mxfp8[-1] < 0.05 * mxfp8[0], (dense, mxfp8)


@pytest.fixture(scope="module")
def inference_vars() -> tuple[nn.Module, Any, jax.Array, jax.Array]:
    x = _x((2, 64))
    model = MLP(mx(bias_init=BIAS_INIT))
    v = jax.jit(model.init)(KEY, x)
    fwd = jax.jit(model.apply)
    return fwd, v, x, fwd(v, x)


def _assert_same_tree_bits(a: Any, b: Any) -> None:
    assert shapes_dtypes(a) == shapes_dtypes(b)
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(a)} == {"float8_e4m3fn", "uint8", "float32"}
    jax.tree.map(
        lambda u, v: np.testing.assert_array_equal(np.asarray(u).view(np.uint8), np.asarray(v).view(np.uint8)),
        a,
        b,
    )


def test_flax_serialization_round_trip_keeps_fp8_and_uint8(inference_vars: Any) -> None:
    fwd, v, x, y = inference_vars
    restored = flax.serialization.from_bytes(v, flax.serialization.to_bytes(v))
    _assert_same_tree_bits(restored, v)
    # Without a target: msgpack restores numpy arrays of the same dtypes.
    _assert_same_tree_bits(flax.serialization.msgpack_restore(flax.serialization.msgpack_serialize(v)), v)
    np.testing.assert_array_equal(fwd(restored, x), y)


def test_orbax_round_trip_keeps_fp8_and_uint8(inference_vars: Any, tmp_path: Any) -> None:
    fwd, v, x, y = inference_vars
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", v)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "ckpt", jax.tree.map(ocp.utils.to_shape_dtype_struct, v))
        untargeted = ckpt.restore(tmp_path / "ckpt")
    _assert_same_tree_bits(restored, v)
    _assert_same_tree_bits(untargeted, v)
    np.testing.assert_array_equal(fwd(restored, x), y)


def test_errors_name_layer_tensor_shape_dtype() -> None:
    x = jnp.ones((2, 64))
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)  # noqa: E731
    v = zeros(jax.eval_shape(MLP(mx()).init, KEY, x))
    vt = zeros(jax.eval_shape(MLP(mx(mode="train")).init, KEY, x))
    # An input of another K than the loaded params: the input is named, with the K the params hold.
    for fn in (MLP(mx()).apply, jax.jit(MLP(mx()).apply)):
        with pytest.raises(
            ValueError,
            match=r"MXFP8Dense at 'fc1': input has shape \(2, 96\) and dtype float32; expected last dimension 64 "
            r"\(the K of the params' 'kernel_q', shape \(128, 64\)\)",
        ):
            fn(v, jnp.ones((2, 96)))
    with pytest.raises(
        ValueError,
        match=r"MXFP8Dense at 'fc1': input has shape \(2, 96\).*last dimension 64 .*'kernel', shape \(64, 128\)",
    ):
        jax.jit(MLP(mx(mode="train")).apply)(vt, jnp.ones((2, 96)))
    # A float8 input, or an MXArray: the layer quantizes float32/bfloat16/float16 arrays itself.
    for dtype in (jnp.float32, jnp.bfloat16):  # the output dtype must not turn a float8 input into an "integer" one
        for bad in (jnp.float8_e4m3fn, jnp.float8_e5m2):
            with pytest.raises(
                TypeError, match=rf"MXFP8Dense at 'fc1': input with shape \(2, 64\) has dtype {jnp.dtype(bad).name}"
            ):
                MLP(mx(dtype=dtype)).apply(v, jnp.ones((2, 64), bad))
    with pytest.raises(TypeError, match=r"MXFP8Dense at 'fc1': input is an MXArray with shape \(2, 64\)"):
        MLP(mx()).apply(v, quantize(x))
    # K not a multiple of 32, at init, in both modes.
    for mode in ("inference", "train"):
        with pytest.raises(ValueError, match=r"MXFP8Dense at 'fc1'.*input of shape \(2, 48\).*K = 48.*multiple of 32"):
            jax.jit(MLP(mx(mode=mode)).init)(KEY, jnp.ones((2, 48)))
    # float64.
    with pytest.raises(TypeError, match=r"MXFP8Dense at 'fc1'.*param_dtype is float64"):
        MLP(mx(param_dtype=jnp.float64)).init(KEY, x)
    with pytest.raises(TypeError, match=r"dtype is float64"):
        MXFP8Dense(8, dtype=jnp.float64).init(KEY, x)
    with (
        jax.enable_x64(True),
        pytest.raises(TypeError, match=r"input with shape \(2, 64\) has dtype float64"),
    ):
        jax.jit(MLP(mx()).apply)(v, jnp.ones((2, 64), jnp.float64))
    # Params of the wrong dtype or of the other mode.
    bad = jax.tree.map(lambda a: a, v)
    bad["params"]["fc2"]["kernel_q"] = bad["params"]["fc2"]["kernel_q"].astype(jnp.float32)
    with pytest.raises(
        TypeError,
        match=r"MXFP8Dense at 'fc2'.*'kernel_q' with shape \(8, 128\) has dtype float32; "
        r"expected float8_e4m3fn",
    ):
        jax.jit(MLP(mx()).apply)(bad, x)
    with pytest.raises(ValueError, match=r"mode='inference' needs .*quantize_params"):
        jax.jit(MLP(mx()).apply)(vt, x)
    with pytest.raises(ValueError, match=r"mode='train' needs a float 'kernel'"):
        jax.jit(MLP(mx(mode="train")).apply)(v, x)
    with pytest.raises(ValueError, match=r"mode must be 'inference' or 'train', got 'fp8'"):
        MXFP8Dense(8, mode="fp8").init(KEY, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown MXFP8 backend 'nope'"):
        MXFP8Dense(8, backend="nope").init(KEY, x)
    # A backend that cannot run here names the layer in both modes (train mode goes through the STE).
    for mode in ("inference", "train"):
        with pytest.raises(
            BackendUnavailableError, match=r"layer \"MXFP8Dense at 'fc1'\".*cannot use backend 'hopper'"
        ):
            MLP(mx(mode=mode, backend="hopper")).init(KEY, x)


def test_a_missing_param_names_the_layer_and_what_it_expects() -> None:
    """Loaded params without a param the layer needs: a ValueError naming the layer, the param and its expected
    dtype and shape (not flax's ScopeVariableNotFoundError "in '/'"); init still creates them all."""
    x = jnp.ones((2, 64))
    v = jax.jit(MLP(mx()).init)(KEY, x)
    vt = jax.jit(MLP(mx(mode="train")).init)(KEY, x)

    def without(tree: Any, layer: str, name: str) -> Any:
        params = {k: dict(p) for k, p in tree["params"].items()}
        del params[layer][name]
        return {"params": params}

    for fn in (MLP(mx()).apply, jax.jit(MLP(mx()).apply)):
        with pytest.raises(
            ValueError,
            match=r"MXFP8Dense at 'fc2': params lack 'kernel_scale' \(expected uint8 of shape \(8, 4\) \(\[N, K/32\]\) "
            r"or \(512,\) \(FlashInfer's 1-D 128x4 layout, from swizzle_params\)\); the params here hold "
            r"\['bias', 'kernel_q'\]",
        ):
            fn(without(v, "fc2", "kernel_scale"), x)
    with pytest.raises(
        ValueError, match=r"MXFP8Dense at 'fc1': params lack 'kernel_q' \(expected float8_e4m3fn of shape \(128, 64\)"
    ):
        MLP(mx()).apply(without(v, "fc1", "kernel_q"), x)
    with pytest.raises(
        ValueError, match=r"'fc1': params lack 'bias' \(expected float32, .* of shape \(128,\) \[N\]; .*use_bias=False"
    ):
        MLP(mx()).apply(without(v, "fc1", "bias"), x)
    with pytest.raises(
        ValueError,
        match=r"'fc1': params lack 'kernel' \(expected float32, bfloat16 or float16 of shape \(64, 128\) \[K, N\]\)",
    ):
        MLP(mx(mode="train")).apply(without(vt, "fc1", "kernel"), x)
    # A train-mode 'kernel' beside a kernel_q: pointed to quantize_params (with no kernel_q, the mode check says so).
    mixed = {"params": {**v["params"], "fc1": {**v["params"]["fc1"], "kernel": vt["params"]["fc1"]["kernel"]}}}
    with pytest.raises(ValueError, match=r"'fc1': params lack 'kernel_scale'.*train-mode 'kernel'.*quantize_params"):
        MLP(mx()).apply(without(mixed, "fc1", "kernel_scale"), x)
    with pytest.raises(ValueError, match=r"mode='inference' needs .*quantize_params"):
        MLP(mx()).apply(vt, x)

    # No params at the layer's path at all: nn.Dense's auto-name 'Dense_0' against 'MXFP8Dense_0'.
    class Wrapper(nn.Module):
        layer: Callable[..., nn.Module]

        @nn.compact
        def __call__(self, h: jax.Array) -> jax.Array:
            return self.layer(8)(h)

    dense_vars = Wrapper(nn.Dense).init(KEY, x)
    converted, _ = quantize_params(dense_vars)
    with pytest.raises(
        ValueError, match=r"MXFP8Dense at 'MXFP8Dense_0': params lack 'kernel_q'.*no params at this path.*'Dense_<i>'"
    ):
        Wrapper(MXFP8Dense).apply(converted, x)
    # init (and apply with mutable params) still creates every param.
    assert set(MXFP8Dense(8).init(KEY, x)["params"]) == {"kernel_q", "kernel_scale", "bias"}
    _, created = MXFP8Dense(8).apply({}, x, rngs={"params": KEY}, mutable=["params"])
    assert set(created["params"]) == {"kernel_q", "kernel_scale", "bias"}


def test_a_kernel_scale_of_wrong_shape_lists_both_layouts() -> None:
    x = jnp.ones((2, 64))
    v = MXFP8Dense(32).init(KEY, x)
    for shape, shown in (((7,), r"\(7,\)"), ((32, 3), r"\(32, 3\)")):
        params = {**v["params"], "kernel_scale": jnp.zeros(shape, jnp.uint8)}
        with pytest.raises(
            ValueError,
            match=rf"MXFP8Dense at '<root>': parameter 'kernel_scale' has shape {shown} and dtype uint8; expected "
            r"shape \(32, 2\) \(\[N, K/32\]\) or \(512,\) \(FlashInfer's 1-D 128x4 layout, from swizzle_params\)",
        ):
            MXFP8Dense(32).apply({"params": params}, x)
    with pytest.raises(TypeError, match=r"'kernel_scale' with shape \(32, 2\) has dtype int8; expected uint8"):
        MXFP8Dense(32).apply({"params": {**v["params"], "kernel_scale": jnp.zeros((32, 2), jnp.int8)}}, x)


PARTITIONED = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))


def test_a_partitioned_kernel_init_annotates_the_inference_params_transposed() -> None:
    """nn.Dense and train mode keep kernel_init's nn.Partitioned box (kernel [K, N]: P('embed', 'mlp')); inference
    mode gives kernel_q [N, K] and kernel_scale [N, K/32] the box with the names transposed, K's name on K/32. The
    values and outputs are those of the unboxed layer bit for bit."""
    x = _x((3, 64))
    dense = nn.Dense(32, kernel_init=PARTITIONED).init(KEY, x)
    assert nn.get_partition_spec(dense) == {"params": {"kernel": P("embed", "mlp"), "bias": P()}}
    train = MXFP8Dense(32, kernel_init=PARTITIONED, mode="train").init(KEY, x)
    assert nn.get_partition_spec(train) == nn.get_partition_spec(dense)

    model = MXFP8Dense(32, kernel_init=PARTITIONED, bias_init=BIAS_INIT)
    v = jax.jit(model.init)(KEY, x)
    spec = P("mlp", "embed")
    assert nn.get_partition_spec(v) == {"params": {"kernel_q": spec, "kernel_scale": spec, "bias": P()}}
    assert all(type(v["params"][k]) is nn.Partitioned for k in ("kernel_q", "kernel_scale"))
    plain_model = MXFP8Dense(32, bias_init=BIAS_INIT)
    plain = plain_model.init(KEY, x)
    assert shapes_dtypes(nn.meta.unbox(v)) == shapes_dtypes(plain)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)),
        nn.meta.unbox(v),
        plain,
    )
    y = apply(model, v, x)
    np.testing.assert_array_equal(y, apply(plain_model, plain, x))
    np.testing.assert_array_equal(model.apply(v, x), y)  # eagerly too
    # The boxed train params, converted, carry the same boxes (the bias's as it was).
    q, report = quantize_params(train)
    assert len(report.converted) == 1
    assert nn.get_partition_spec(q) == nn.get_partition_spec(v)
    assert jax.tree.structure(q) == jax.tree.structure(jax.tree.map(lambda a: a, v))
    np.testing.assert_array_equal(apply(model, q, x), apply(MXFP8Dense(32, mode="train"), nn.meta.unbox(train), x))


def test_logical_and_partial_partitioning_and_other_metadata() -> None:
    x = _x((3, 64))
    rules = (("embed", "model"), ("mlp", None))
    logical = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"), rules=rules)
    v = MXFP8Dense(32, kernel_init=logical).init(KEY, x)
    for name in ("kernel_q", "kernel_scale"):
        box = v["params"][name]
        assert type(box) is nn.LogicallyPartitioned and box.rules == rules and box.names == ("mlp", "embed")
    assert nn.logical_to_mesh_axes(nn.get_partition_spec(v)["params"]["kernel_scale"], rules) == P(None, "model")
    # Fewer names than axes: the rest are None (replicated), then transposed; so do stacked (nn.scan) params.
    first = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed",))
    v = MXFP8Dense(32, kernel_init=first).init(KEY, x)
    assert nn.get_partition_spec(v)["params"]["kernel_q"] == P(None, "embed")
    # Other AxisMetadata: refused at init with the layer's name, skipped by quantize_params.
    tagged = lambda *a: Tagged(nn.initializers.lecun_normal()(*a))  # noqa: E731
    with pytest.raises(TypeError, match=r"MXFP8Dense at '<root>': kernel_init returned .*boxed in Tagged"):
        MXFP8Dense(32, kernel_init=tagged).init(KEY, x)
    train = MXFP8Dense(32, kernel_init=tagged, mode="train").init(KEY, x)
    q, report = quantize_params(train)
    assert not report.converted and "boxed in Tagged" in report.skipped[0].reason
    assert q["params"]["kernel"] is train["params"]["kernel"]


class Tagged(flax.struct.PyTreeNode, nn.meta.AxisMetadata):
    """An ``AxisMetadata`` that is not ``nn.Partitioned``."""

    value: Any

    def unbox(self) -> Any:
        return self.value

    def replace_boxed(self, val: Any) -> Tagged:
        return self.replace(value=val)

    def add_axis(self, index: int, params: dict[Any, Any]) -> Tagged:
        return self

    def remove_axis(self, index: int, params: dict[Any, Any]) -> Tagged:
        return self


class PartitionedStack(nn.Module):
    """Two partitioned layers through ``nn.scan``, the stacked axis named 'layers'."""

    mode: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        class Layer(nn.Module):
            mode: str

            @nn.compact
            def __call__(self, h: jax.Array, _: None) -> tuple[jax.Array, None]:
                return MXFP8Dense(64, kernel_init=PARTITIONED, mode=self.mode, name="dense")(h), None

        scan = nn.scan(
            Layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=2,
            metadata_params={nn.meta.PARTITION_NAME: "layers"},
        )
        return scan(self.mode, name="blocks")(x, None)[0]


def test_partitioned_params_stacked_by_nn_scan() -> None:
    x = _x((3, 64))
    train = jax.jit(PartitionedStack("train").init)(KEY, x)
    infer = jax.jit(PartitionedStack("inference").init)(KEY, x)
    assert nn.get_partition_spec(train)["params"]["blocks"]["dense"]["kernel"] == P("layers", "embed", "mlp")
    spec = P("layers", "mlp", "embed")
    assert nn.get_partition_spec(infer)["params"]["blocks"]["dense"] == {
        "kernel_q": spec,
        "kernel_scale": spec,
        "bias": P(),  # an unboxed param, as in nn.Dense
    }
    q, _ = quantize_params(train, stacked="*blocks*")
    assert nn.get_partition_spec(q) == nn.get_partition_spec(infer)
    y = apply(PartitionedStack("train"), train, x)
    np.testing.assert_array_equal(apply(PartitionedStack("inference"), q, x), y)
    np.testing.assert_array_equal(apply(PartitionedStack("inference"), infer, x), y)


_SHARDED_INIT = """
import jax, numpy as np, flax.linen as nn
from jax.sharding import PartitionSpec as P
from mxfp8_xla.flax import MXFP8Dense
mesh = jax.make_mesh((2, 2), ("embed", "mlp"))
x = np.random.default_rng(0).standard_normal((4, 128)).astype(np.float32)
model = MXFP8Dense(64, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")))
abstract = jax.eval_shape(model.init, jax.random.key(0), x)
v = jax.jit(model.init, out_shardings=nn.get_sharding(abstract, mesh))(jax.random.key(0), x)
q, s = v["params"]["kernel_q"].value, v["params"]["kernel_scale"].value
assert q.sharding.spec == s.sharding.spec == P("mlp", "embed"), (q.sharding, s.sharding)
assert {sh.data.shape for sh in q.addressable_shards} == {(32, 64)}  # [N/2, K/2]
assert {sh.data.shape for sh in s.addressable_shards} == {(32, 2)}  # [N/2, K/64]: whole 32-blocks of K/2
plain = MXFP8Dense(64).init(jax.random.key(0), x)
np.testing.assert_array_equal(np.asarray(s), np.asarray(plain["params"]["kernel_scale"]))
y = jax.jit(model.apply)(v, x)  # K split: partial sums added in another order
np.testing.assert_allclose(y, MXFP8Dense(64).apply(plain, x), rtol=1e-6, atol=1e-6)
print("ok")
"""


def test_partitioned_init_shards_over_a_mesh_in_a_process_with_4_cpu_devices() -> None:
    """The annotations shard ``jit(init, out_shardings=nn.get_sharding(...))`` over a real 2x2 mesh: kernel_scale
    splits along K/32 where kernel_q splits along K, device by device in whole 32-blocks, and the sharded layer
    computes the unsharded output."""
    env = subprocess_env()
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED_INIT], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
