"""NNX ``MXFP8Linear``: params, math, modes, nnx transforms, training, errors."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref
from conftest import subprocess_env
from flax import nnx
from jax.experimental.layout import Format, Layout
from jax.sharding import PartitionSpec as P

from mxfp8_xla import quantize
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
    for dtype in (None, jnp.bfloat16):  # with an output dtype too: float8 is not an integer input to cast
        typed = MXFP8Linear(64, 8, dtype=dtype, rngs=nnx.Rngs(0))
        for bad in (jnp.float8_e4m3fn, jnp.float8_e5m2):
            with pytest.raises(
                TypeError, match=rf"MXFP8Linear\(64, 8\): input with shape \(2, 64\) has dtype {jnp.dtype(bad).name}"
            ):
                call(typed, jnp.ones((2, 64), bad))
    with pytest.raises(TypeError, match=r"MXFP8Linear\(64, 8\): input is an MXArray with shape \(2, 64\); layers take"):
        layer(quantize(jnp.ones((2, 64))))
    layer.kernel_q = nnx.Param(layer.kernel_q[...].astype(jnp.float32))
    with pytest.raises(TypeError, match=r"'kernel_q' with shape \(8, 64\) has dtype float32; expected float8_e4m3fn"):
        call(layer, jnp.ones((2, 64)))


def test_from_linear_refuses_what_is_not_a_linear() -> None:
    with pytest.raises(
        TypeError,
        match=r"expects an nnx.Linear \(a 2-D kernel \[K, N\]\), got Conv with a kernel of shape \(3, 32, 8\)",
    ):
        MXFP8Linear.from_linear(nnx.Conv(32, 8, (3,), rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match=r"got Dropout without a kernel"):
        MXFP8Linear.from_linear(nnx.Dropout(0.1))


EMBED_MLP = ("embed", "mlp")
PARTITIONED = nnx.with_partitioning(nnx.initializers.lecun_normal(), EMBED_MLP)


def one_device_mesh() -> jax.sharding.Mesh:
    """A 1x1 mesh with the axes ``PARTITIONED`` names: flax shards annotated Params eagerly, so creating them needs
    a mesh (``jax.set_mesh``)."""
    return jax.make_mesh((1, 1), EMBED_MLP)


def specs(module: nnx.Module) -> dict[str, Any]:
    return nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(module, nnx.Param)))


def transposed(spec: P) -> P:
    return P(*reversed((*spec, *(None,) * (2 - len(spec)))))


def assert_same_state(a: nnx.Module, b: nnx.Module) -> None:
    """The same param names, shapes, dtypes and bytes."""
    sa, sb = state_dict(a), state_dict(b)
    assert shapes_dtypes(sa) == shapes_dtypes(sb)
    jax.tree.map(
        lambda u, v: np.testing.assert_array_equal(np.asarray(u).view(np.uint8), np.asarray(v).view(np.uint8)), sa, sb
    )


def test_a_partitioned_kernel_init_annotates_the_inference_params_transposed() -> None:
    """nnx.Linear and train mode keep kernel_init's sharding on kernel [K, N] (P('embed', 'mlp')); inference mode
    gives kernel_q [N, K] and kernel_scale [N, K/32] the names transposed, K's name on K/32, through flax's own
    out_sharding metadata. The values and outputs are those of the unannotated layer bit for bit."""
    with jax.set_mesh(one_device_mesh()):
        linear = nnx.Linear(64, 32, kernel_init=PARTITIONED, bias_init=BIAS_INIT, rngs=nnx.Rngs(0))
        train = MXFP8Linear(64, 32, kernel_init=PARTITIONED, bias_init=BIAS_INIT, mode="train", rngs=nnx.Rngs(0))
        infer = MXFP8Linear(64, 32, kernel_init=PARTITIONED, bias_init=BIAS_INIT, rngs=nnx.Rngs(0))
    assert specs(linear) == {"kernel": P("embed", "mlp"), "bias": P()}
    assert specs(train) == specs(linear)
    assert train.kernel.get_metadata() == linear.kernel.get_metadata()
    spec = P("mlp", "embed")
    assert specs(infer) == {"kernel_q": spec, "kernel_scale": spec, "bias": P()}
    for name in ("kernel_q", "kernel_scale"):
        param = getattr(infer, name)
        assert type(param) is nnx.Param and param.get_metadata() == {
            **linear.kernel.get_metadata(),
            "out_sharding": ("mlp", "embed"),
        }
        assert param[...].sharding.spec == spec  # placed by flax's eager sharding
    plain = MXFP8Linear(64, 32, bias_init=BIAS_INIT, rngs=nnx.Rngs(0))
    assert_same_state(infer, plain)
    x = _x((3, 64))
    np.testing.assert_array_equal(call(infer, x), call(plain, x))
    np.testing.assert_array_equal(infer(x), call(plain, x))


def test_from_linear_carries_the_sharding_transposed_and_the_bias_metadata_as_is() -> None:
    """from_linear's kernel_q/kernel_scale get the Linear kernel's partition spec transposed, the bias keeps its
    Param metadata (and train mode the kernel's); outside the mesh context too (flax places the new params in the
    mesh the kernel is sharded over). They equal a partitioned inference init, and the unannotated layer's bytes."""
    bias_init = nnx.with_partitioning(BIAS_INIT, ("mlp",))
    with jax.set_mesh(one_device_mesh()):
        linear = nnx.Linear(64, 32, kernel_init=PARTITIONED, bias_init=bias_init, rngs=nnx.Rngs(0))
        inside = MXFP8Linear.from_linear(linear)
        init = MXFP8Linear(64, 32, kernel_init=PARTITIONED, bias_init=bias_init, rngs=nnx.Rngs(0))
    spec = specs(linear)
    assert spec == {"kernel": P("embed", "mlp"), "bias": P("mlp")}
    outside = MXFP8Linear.from_linear(linear)
    expected = {
        "kernel_q": transposed(spec["kernel"]),
        "kernel_scale": transposed(spec["kernel"]),
        "bias": spec["bias"],
    }
    for new in (inside, outside):
        assert specs(new) == expected == specs(init)
        assert new.bias.get_metadata() == linear.bias.get_metadata()
        assert new.kernel_q.get_metadata("out_sharding") == ("mlp", "embed")
        assert new.kernel_scale[...].sharding.spec == P("mlp", "embed")
        assert_same_state(new, init)
    train = MXFP8Linear.from_linear(linear, mode="train")
    assert specs(train) == spec and train.kernel.get_metadata() == linear.kernel.get_metadata()
    plain = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
    plain.kernel[...], plain.bias[...] = np.asarray(linear.kernel[...]), np.asarray(linear.bias[...])
    assert_same_state(outside, MXFP8Linear.from_linear(plain))
    x = _x((3, 64))
    np.testing.assert_array_equal(call(outside, x), call(MXFP8Linear.from_linear(plain), x))
    np.testing.assert_array_equal(call(train, x), call(outside, x))


def test_sharding_forms_rules_mesh_and_optimizer_sharding() -> None:
    """A PartitionSpec stays one, names left off are None (replicated) before the swap, logical names keep their
    sharding_rules, a mesh in the metadata stays, optimizer_sharding is transposed as out_sharding is, and a
    NamedSharding keeps its mesh; the Variable's modes are kept."""
    mesh = one_device_mesh()
    rules = (("rows", "embed"), ("cols", "mlp"))
    logical = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("rows", "cols"), sharding_rules=rules)
    first = nnx.with_partitioning(nnx.initializers.lecun_normal(), P("embed"), mesh=mesh)  # no context needed
    opt = nnx.with_metadata(nnx.initializers.lecun_normal(), out_sharding=EMBED_MLP, optimizer_sharding=(None, "mlp"))
    with jax.set_mesh(mesh):
        layer = MXFP8Linear(64, 32, kernel_init=logical, rngs=nnx.Rngs(0))
        assert layer.kernel_q.get_metadata("out_sharding") == ("cols", "rows")
        assert layer.kernel_scale.get_metadata("sharding_rules") == rules
        assert specs(layer)["kernel_scale"] == P("mlp", "embed")  # the rules applied
        layer = MXFP8Linear(64, 32, kernel_init=opt, rngs=nnx.Rngs(0))
        assert layer.kernel_scale.get_metadata("optimizer_sharding") == ("mlp", None)
    layer = MXFP8Linear(64, 32, kernel_init=first, rngs=nnx.Rngs(0))
    q = layer.kernel_q.get_metadata()
    assert q["out_sharding"] == P(None, "embed") and isinstance(q["out_sharding"], P) and q["mesh"] is mesh
    assert specs(layer)["kernel_q"] == P(None, "embed")
    named = jax.sharding.NamedSharding(mesh, P("embed", "mlp"))
    linear = nnx.Linear(
        64, 32, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), named), rngs=nnx.Rngs(0)
    )
    new = MXFP8Linear.from_linear(linear)
    assert new.kernel_q.get_metadata("out_sharding") == named.update(spec=P("mlp", "embed"))
    assert new.kernel_scale[...].sharding == jax.sharding.NamedSharding(mesh, P("mlp", "embed"))
    with nnx.use_eager_sharding(False):  # annotations only: no mesh needed, nothing placed
        linear = nnx.Linear(64, 32, kernel_init=PARTITIONED, rngs=nnx.Rngs(0))
    new = MXFP8Linear.from_linear(linear)
    assert new.kernel_q.get_metadata("eager_sharding") is False and specs(new)["kernel_q"] == P("mlp", "embed")


def test_metadata_that_cannot_be_carried_is_dropped_or_refused(caplog: Any) -> None:
    """Other metadata: a non-tuple value is kept; a tuple (maybe per axis of [K, N]) and a Variable hook are dropped
    by from_linear with a warning naming them; a hook in kernel_init is refused (it would act on the float kernel);
    a sharding that is not axis names, or names more axes than 2, is refused."""
    with jax.set_mesh(one_device_mesh()):
        linear = nnx.Linear(64, 32, kernel_init=PARTITIONED, rngs=nnx.Rngs(0))
    linear.kernel.set_metadata(note="attention", axes=("in", "out"))
    with caplog.at_level(logging.WARNING, logger="mxfp8_xla.flax"):
        new = MXFP8Linear.from_linear(linear)
    meta = new.kernel_q.get_metadata()
    assert meta["note"] == "attention" and "axes" not in meta and meta["out_sharding"] == ("mlp", "embed")
    assert "MXFP8Linear(64, 32): the nnx.Linear's kernel metadata 'axes' (a tuple" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # flax: Variable hooks are deprecated
        doubled = nnx.with_metadata(nnx.initializers.lecun_normal(), on_get_value=lambda _, v: 2 * v)
        with pytest.raises(TypeError, match=r"MXFP8Linear\(64, 32\): kernel_init's metadata has Variable hooks"):
            MXFP8Linear(64, 32, kernel_init=doubled, rngs=nnx.Rngs(0))
        hooked = nnx.Linear(64, 32, kernel_init=doubled, rngs=nnx.Rngs(0))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mxfp8_xla.flax"):
            new = MXFP8Linear.from_linear(hooked)
    assert "'on_get_value' (a Variable hook; the kernel was read through it)" in caplog.text
    assert "on_get_value" not in new.kernel_q.get_metadata()
    train = MXFP8Linear(64, 32, mode="train", rngs=nnx.Rngs(0))
    train.kernel[...] = hooked.kernel[...]  # the doubled kernel nnx.Linear computes with
    x = _x((3, 64))
    np.testing.assert_array_equal(call(new, x), call(train, x))
    layout = Format(Layout(major_to_minor=(0, 1)), jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    with pytest.raises(TypeError, match=r"kernel_init's 'out_sharding' metadata is a Format .*only axis names"):
        MXFP8Linear(
            64,
            32,
            kernel_init=nnx.with_metadata(nnx.initializers.lecun_normal(), out_sharding=layout),
            rngs=nnx.Rngs(0),
        )
    linear.kernel.set_metadata(out_sharding=layout)
    with pytest.raises(TypeError, match=r"the nnx.Linear's kernel 'out_sharding' metadata is a Format"):
        MXFP8Linear.from_linear(linear)
    linear.kernel.set_metadata(out_sharding=("layers", "embed", "mlp"))
    with pytest.raises(ValueError, match=r"'out_sharding' metadata \('layers', 'embed', 'mlp'\) names 3 axes"):
        MXFP8Linear.from_linear(linear)


def test_partitioned_layers_stacked_by_nnx_vmap() -> None:
    """nnx.vmap's transform_metadata adds the stacked axis's name in front of the transposed names."""

    @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: "layers"})
    def stack(rngs: nnx.Rngs) -> MXFP8Linear:
        return MXFP8Linear(64, 64, kernel_init=PARTITIONED, rngs=rngs)

    with jax.set_mesh(one_device_mesh()):
        layers = stack(nnx.Rngs(0).split(2))
    spec = P("layers", "mlp", "embed")
    assert specs(layers) == {"kernel_q": spec, "kernel_scale": spec, "bias": P()}
    assert layers.kernel_scale.shape == (2, 64, 2)


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from mxfp8_xla.flax import MXFP8Linear, quantize_module

class MLP(nnx.Module):  # both kernels split both ways: up K over 'embed', N over 'mlp'; down the other way
    def __init__(self, shard, rngs):
        init, bias = nnx.initializers.lecun_normal(), nnx.initializers.normal(0.5)
        up, down, up_bias = (("embed", "mlp"), ("mlp", "embed"), ("mlp",)) if shard else (None, None, None)
        wrap = lambda f, names: f if names is None else nnx.with_partitioning(f, names)
        self.up = nnx.Linear(128, 256, kernel_init=wrap(init, up), bias_init=wrap(bias, up_bias), rngs=rngs)
        self.down = nnx.Linear(256, 128, kernel_init=wrap(init, down), bias_init=bias, rngs=rngs)
    def __call__(self, x):
        return self.down(nnx.relu(self.up(x)))

mesh = jax.make_mesh((2, 2), ("embed", "mlp"), axis_types=(AxisType.Auto,) * 2)
x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 128)), jnp.float32)
plain = MLP(False, nnx.Rngs(0))
quantize_module(plain)
y_plain = nnx.jit(lambda m, x: m(x))(plain, x)
with jax.set_mesh(mesh):
    model = MLP(True, nnx.Rngs(0))
outside = nnx.clone(model)
with jax.set_mesh(mesh):
    report = quantize_module(model)
assert len(report.converted) == 2 and not report.skipped, report
quantize_module(outside)  # out of the mesh context: placed in the mesh the kernels are sharded over
specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model)))
assert specs == {
    "up": {"kernel_q": P("mlp", "embed"), "kernel_scale": P("mlp", "embed"), "bias": P("mlp")},
    "down": {"kernel_q": P("embed", "mlp"), "kernel_scale": P("embed", "mlp"), "bias": P()},
}, specs
shards = {  # N and K halved, K/32 with K: whole 32-blocks of K on every device
    ("up", "kernel_q"): (128, 64), ("up", "kernel_scale"): (128, 2),
    ("down", "kernel_q"): (64, 128), ("down", "kernel_scale"): (64, 4),
}
for m in (model, outside):
    for (layer, name), shape in shards.items():
        a = getattr(getattr(m, layer), name)[...]
        spec = specs[layer][name]
        assert a.sharding.is_equivalent_to(NamedSharding(mesh, spec), a.ndim), (layer, name, a.sharding)
        assert {s.data.shape for s in a.addressable_shards} == {shape}, (layer, name)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(getattr(getattr(plain, layer), name)[...]))
    assert m.up.bias[...].sharding.is_equivalent_to(NamedSharding(mesh, P("mlp")), 1)
    with jax.set_mesh(mesh):
        y = nnx.jit(lambda m, x: m(x))(m, x)  # K of 'down' split: partial sums added in another order
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_plain), rtol=1e-6, atol=1e-6)
# The specs shard unsharded quantized params (a checkpoint's pure dict) through jit's out_shardings, and a
# partitioned inference init places them the same way.
shardings = nnx.to_pure_dict(nnx.get_named_sharding(nnx.state(model), mesh))
col = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
with jax.set_mesh(mesh):
    loaded = jax.jit(lambda s: s, out_shardings=shardings)(nnx.to_pure_dict(nnx.state(plain)))
    init = MXFP8Linear(128, 256, kernel_init=col, rngs=nnx.Rngs(0))
for name in ("kernel_q", "kernel_scale"):
    assert loaded["up"][name].sharding.is_equivalent_to(getattr(model.up, name)[...].sharding, 2)
    assert getattr(init, name)[...].sharding.is_equivalent_to(NamedSharding(mesh, P("mlp", "embed")), 2)
print("ok")
"""


def test_a_sharded_model_quantizes_to_sharded_params_in_a_process_with_4_cpu_devices() -> None:
    """An MLP sharded with nnx.with_partitioning over a real 2x2 mesh (K and N of both kernels split), quantized by
    quantize_module inside and outside the mesh context: kernel_q and kernel_scale are sharded by the transposed
    specs (kernel_scale along K/32 where kernel_q is along K, whole 32-blocks per device), hold the unsharded
    quantization's bytes, and the sharded model computes the unsharded outputs within float32 summation order."""
    env = subprocess_env()
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
