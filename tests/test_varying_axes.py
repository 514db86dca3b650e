"""mxfp8_xla.varying_axes on a one-device mesh of two axes (varying types need no second device); the products and
gradients on four devices are in tests/varying_axes_cases.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from mxfp8_xla import MXArray, quantize, varying_axes
from mxfp8_xla.interop import torch_callback

MESH = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def inside(f, *args, in_specs, out_specs=None):
    """``f(*args)`` inside a checking shard_map, its result returned as is (check_vma=True, the default)."""
    return jax.shard_map(f, mesh=MESH, in_specs=in_specs, out_specs=P() if out_specs is None else out_specs)(*args)


def test_outside_a_shard_map_nothing_varies_and_nothing_is_cast():
    x = jnp.ones((4, 32))
    assert varying_axes.of(x, quantize(x)) == frozenset()
    assert varying_axes.cast_to(x, frozenset()) is x
    assert varying_axes.match(x, x) == (x, x)
    assert varying_axes.struct((2, 3), jnp.bfloat16, x).manual_axis_type.varying == frozenset()


def test_of_is_the_union_over_every_leaf_of_every_tree():
    def f(x, w):
        assert varying_axes.of(x) == {"data"} and varying_axes.of(w) == {"model"}
        assert varying_axes.of(x, w) == {"data", "model"}
        assert varying_axes.of(MXArray(w.astype(jnp.float8_e4m3fn), jnp.zeros((4, 1), jnp.uint8))) == {"model"}
        return jnp.zeros(())

    inside(f, jnp.ones((4, 32)), jnp.ones((4, 32)), in_specs=(P("data"), P("model")))


def test_struct_and_cast_to_type_a_value_as_varying_over_the_operands_axes():
    def f(x, w):
        assert varying_axes.struct((2, 3), jnp.bfloat16, x, w).manual_axis_type.varying == {"data", "model"}
        cast = varying_axes.cast_to({"a": w, "b": x}, varying_axes.of(x, w))
        assert [varying_axes.of(v) for v in jax.tree.leaves(cast)] == [{"data", "model"}] * 2
        assert varying_axes.cast_to(x, frozenset({"data"})) is x  # already varying there: untouched
        a, b = varying_axes.match(x, w)
        assert varying_axes.of(a) == varying_axes.of(b) == {"data", "model"}
        return jnp.zeros(())

    inside(f, jnp.ones((4, 32)), jnp.ones((4, 32)), in_specs=(P("data"), P("model")))


def test_the_gradient_through_a_cast_comes_back_typed_as_its_primal_summed():
    """pcast's transpose sums over the added axes, so a replicated value's gradient is unvarying again."""

    def grad(w, x):
        g = jax.grad(lambda w: jnp.sum(varying_axes.match(x, w)[1] * x))(w)
        assert varying_axes.of(g) == frozenset()
        return g

    x = jnp.arange(8.0).reshape(2, 4)
    g = inside(grad, jnp.ones((2, 4)), x, in_specs=(P(), P("data")))
    np.testing.assert_array_equal(g, x)


def test_torch_callback_outputs_vary_as_their_inputs():
    pytest.importorskip("torch")

    def f(x):
        y = torch_callback(lambda t: t * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        assert varying_axes.of(y) == {"data"}
        return y

    x = jnp.arange(8.0).reshape(2, 4)
    np.testing.assert_array_equal(jax.jit(lambda x: inside(f, x, in_specs=P("data"), out_specs=P("data")))(x), 2 * x)
    with pytest.raises(ValueError, match="out_specs which require replication"):
        inside(f, x, in_specs=P("data"), out_specs=P())
