"""Gradients of MXFP8 layers on a mesh of ``Explicit`` axes (``jax.make_mesh``'s default), run by
tests/test_sharding.py in a subprocess with 4 CPU devices. Prints one line per case, then OK.

On Explicit axes a product whose contraction is sharded must be told its output's sharding. The straight-through
backward products contract over the rows (``dkernel``, rows split over ``data``) or over N (``dx`` of a
column-parallel layer, N split over ``model``), so the custom_vjp rules pass the primal's sharding, as JAX's own
dot transpose does; without it ``jax.grad`` raised ``ShardingTypeError`` even for plain data parallelism.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.flax import MXFP8Linear, quantize_module  # noqa: E402
from mxfp8_xla.ste import mxfp8_linear_ste  # noqa: E402

MESH = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 256)).astype(np.float32)  # [B, K]
C = RNG.standard_normal((8, 128)).astype(np.float32)  # [B, N]: the loss's weights
KERNEL = (RNG.standard_normal((256, 128)) * 0.05).astype(np.float32)  # [K, N]


def loss(layer, x):
    return jnp.sum(jnp.asarray(C) * layer(x).astype(jnp.float32))


def check(label, got, want, sharded_as=None) -> None:
    """``got`` equals ``want`` up to float32 summation order, and is sharded as ``sharded_as`` (a spec)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    if sharded_as is not None:
        specs = jax.tree.leaves(sharded_as, is_leaf=lambda s: isinstance(s, P))
        for g, spec in zip(jax.tree.leaves(got), specs, strict=True):
            assert g.sharding.is_equivalent_to(NamedSharding(MESH, spec), g.ndim), (label, g.sharding, spec)
    print(f"{label}: equal to the unsharded gradient")


def check_layer(names: tuple[str | None, str | None] | None, label: str) -> None:
    """Train and inference ``MXFP8Linear`` under data parallelism, its kernel partitioned by ``names``."""
    init = nnx.initializers.lecun_normal()
    plain = MXFP8Linear(256, 128, kernel_init=init, mode="train", rngs=nnx.Rngs(0))
    want_params = nnx.grad(loss)(plain, jnp.asarray(X))
    want_x = jax.grad(loss, argnums=1)(plain, jnp.asarray(X))
    with jax.set_mesh(MESH):
        kernel_init = init if names is None else nnx.with_partitioning(init, names)
        layer = MXFP8Linear(256, 128, kernel_init=kernel_init, mode="train", rngs=nnx.Rngs(0))
        x = jax.device_put(jnp.asarray(X), P("data", None))
        grads = nnx.jit(nnx.grad(loss))(layer, x)
        check(f"train mode, data-parallel, {label}, params", grads, want_params)
        kernel_spec = P(*names) if names else P(None, None)
        assert grads["kernel"][...].sharding.is_equivalent_to(NamedSharding(MESH, kernel_spec), 2)
        check(f"train mode, data-parallel, {label}, x", jax.grad(loss, argnums=1)(layer, x), want_x, P("data"))
        quantize_module(layer)
    quantize_module(plain)
    want_x = jax.grad(loss, argnums=1)(plain, jnp.asarray(X))
    with jax.set_mesh(MESH):
        dx = nnx.jit(nnx.grad(loss, argnums=1))(layer, x)
        check(f"inference mode, data-parallel, {label}, x", dx, want_x, P("data"))


def main() -> int:
    check_layer((None, "model"), "column-parallel")
    check_layer(None, "replicated")

    # the op itself, bf16 (the backward products on bf16 operands), eager and under jit
    x16, k16 = jnp.asarray(X, jnp.bfloat16), jnp.asarray(KERNEL, jnp.bfloat16)
    f = lambda x, k: jnp.sum(jnp.asarray(C) * mxfp8_linear_ste(x, k).astype(jnp.float32))  # noqa: E731
    want = jax.grad(f, argnums=(0, 1))(x16, k16)
    with jax.set_mesh(MESH):
        xs, ks = jax.device_put(x16, P("data", None)), jax.device_put(k16, P(None, "model"))
        for run in (jax.grad(f, argnums=(0, 1)), jax.jit(jax.grad(f, argnums=(0, 1)))):
            check("mxfp8_linear_ste in bf16", run(xs, ks), want, (P("data", None), P(None, "model")))

    # the fused add-and-norm entry point differentiates its composition; here it composes (emulation)
    w = mx.quantize(jnp.asarray(KERNEL.T))  # [N, K]
    g = lambda x, d: jnp.sum(jnp.asarray(C) * mx.add_rms_norm_matmul(x, d, jnp.ones(256), w, eps=1e-6)[0])  # noqa: E731
    want = jax.grad(g, argnums=(0, 1))(jnp.asarray(X), jnp.asarray(X) * 0.5)
    with jax.set_mesh(MESH):
        xs, ds = (jax.device_put(a, P("data", None)) for a in (jnp.asarray(X), jnp.asarray(X) * 0.5))
        check("add_rms_norm_matmul", jax.jit(jax.grad(g, argnums=(0, 1)))(xs, ds), want, (P("data"), P("data")))
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
