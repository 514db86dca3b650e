"""MXFP8 layers on a mesh of ``Explicit`` axes (``jax.make_mesh``'s default), run by tests/test_sharding.py in a
subprocess with 4 CPU devices. Prints one line per case, then OK.

On Explicit axes a product whose contraction is sharded must be told its output's sharding. The straight-through
backward products contract over the rows (``dkernel``, rows split over ``data``) or over N (``dx`` of a
column-parallel layer, N split over ``model``), so the custom_vjp rules pass the primal's sharding, as JAX's own
dot transpose does; without it ``jax.grad`` raised ``ShardingTypeError`` even for plain data parallelism. The
products and quantizations run shard by shard (``mxfp8_xla.per_shard``): the hopper backend's Pallas kernels refuse
a split operand, and a row-parallel layer takes ``out_sharding`` as ``nnx.Linear`` does.
"""

from __future__ import annotations

import functools
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
from mxfp8_xla.backends import hopper  # noqa: E402
from mxfp8_xla.backends.flashinfer import prepare_weight  # noqa: E402
from mxfp8_xla.backends.select import Capability, override_capability  # noqa: E402
from mxfp8_xla.flax import MXFP8Dense, MXFP8Linear  # noqa: E402
from mxfp8_xla.ste import mxfp8_linear_ste  # noqa: E402

H100 = Capability(platform="gpu", device_kind="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))

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
    print(f"{label}: equal to the unsharded one")


def check_layer(names: tuple[str | None, str | None] | None, label: str) -> None:
    """Train and inference ``MXFP8Linear`` under data parallelism, its kernel partitioned by ``names``."""
    init = nnx.initializers.lecun_normal()
    for mode in ("train", "inference"):
        plain = MXFP8Linear(256, 128, kernel_init=init, mode=mode, rngs=nnx.Rngs(0))
        want_x = jax.grad(loss, argnums=1)(plain, jnp.asarray(X))
        with jax.set_mesh(MESH):
            kernel_init = init if names is None else nnx.with_partitioning(init, names)
            layer = MXFP8Linear(256, 128, kernel_init=kernel_init, mode=mode, rngs=nnx.Rngs(0))
            assert ("kernel" in nnx.state(layer)) == (mode == "train")
            x = jax.device_put(jnp.asarray(X), P("data", None))
            dx = nnx.jit(nnx.grad(loss, argnums=1))(layer, x)
            check(f"{mode} mode, data-parallel, {label}, x", dx, want_x, P("data"))
            if mode == "train":
                grads = nnx.jit(nnx.grad(loss))(layer, x)
                check(f"train mode, data-parallel, {label}, params", grads, nnx.grad(loss)(plain, jnp.asarray(X)))
                kernel_spec = P(*names) if names else P(None, None)
                assert grads["kernel"][...].sharding.is_equivalent_to(NamedSharding(MESH, kernel_spec), 2)


def check_row_parallel(mode: str) -> None:
    """K split on the input and the kernel: the output needs ``out_sharding`` (as ``nnx.Linear``'s), and then
    equals the unsharded layer's, its gradients split as their primals."""
    init = nnx.initializers.lecun_normal()
    plain = MXFP8Linear(256, 128, kernel_init=init, mode=mode, rngs=nnx.Rngs(0))
    with jax.set_mesh(MESH):
        layer = MXFP8Linear(
            256, 128, kernel_init=nnx.with_partitioning(init, ("model", None)), mode=mode, rngs=nnx.Rngs(0)
        )
    assert ("kernel" in nnx.state(layer)) == (mode == "train")
    summed = P("data", None)
    row_loss = lambda m, x: jnp.sum(jnp.asarray(C) * m(x, out_sharding=summed).astype(jnp.float32))  # noqa: E731
    want_y, want_x = plain(jnp.asarray(X)), jax.grad(loss, argnums=1)(plain, jnp.asarray(X))
    with jax.set_mesh(MESH):
        x = jax.device_put(jnp.asarray(X), P("data", "model"))
        try:
            layer(x)
        except ValueError as e:
            assert "both split K over mesh axes ('model',)" in str(e) and "pass out_sharding" in str(e), e
        else:
            raise AssertionError("a K-split product without out_sharding was accepted")
        check(
            f"{mode} mode, row-parallel, y", nnx.jit(lambda m, x: m(x, out_sharding=summed))(layer, x), want_y, summed
        )
        check(
            f"{mode} mode, row-parallel, x",
            nnx.jit(nnx.grad(row_loss, argnums=1))(layer, x),
            want_x,
            P("data", "model"),
        )
        if mode == "train":
            grads = nnx.jit(nnx.grad(row_loss))(layer, x)
            check("train mode, row-parallel, params", grads, nnx.grad(loss)(plain, jnp.asarray(X)))
            assert grads["kernel"][...].sharding.is_equivalent_to(NamedSharding(MESH, P("model", None)), 2)


def check_hopper() -> None:
    """The hopper backend's kernels (Pallas, interpret mode) on split operands: shard by shard, equal to emulation
    up to float32 summation order; train mode quantizes with its own kernels, per shard."""
    w = mx.quantize(jnp.asarray(KERNEL.T))  # [N, K] = [128, 256]
    for rows in (8, 80):
        x = jnp.asarray(np.resize(X, (rows, 256)), jnp.bfloat16)
        want = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32)
        cases = ((P("data", None), P(None, None), None), (P("data", None), P("model", None), None))
        cases += ((P("data", "model"), P(None, "model"), P("data", None)), (P("data", None), P(None, "model"), None))
        with jax.set_mesh(MESH), override_capability(H100), hopper.interpret_mode():
            for x_spec, w_spec, out in cases:
                xs, ws = jax.device_put(x, x_spec), mx.MXArray(*(jax.device_put(a, w_spec) for a in (w.data, w.scale)))
                run = jax.jit(
                    lambda x, w, out=out: mx.mxfp8_matmul(
                        x, w, backend="hopper", out_dtype=jnp.float32, out_sharding=out
                    )
                )
                y = run(xs, ws)
                np.testing.assert_allclose(
                    np.asarray(y), np.asarray(want), rtol=1e-6, atol=1e-5 * float(jnp.max(jnp.abs(want)))
                )
                spec = out or P(x_spec[0], w_spec[0])
                assert y.sharding.is_equivalent_to(NamedSharding(MESH, spec), 2), (y.sharding, spec)
                print(f"hopper, {rows} rows, x {x_spec}, w {w_spec}: equal to emulation")

    def f(x, k, backend="hopper"):
        return jnp.sum(jnp.asarray(C) * mxfp8_linear_ste(x, k, backend=backend).astype(jnp.float32))

    x16, k16 = jnp.asarray(X, jnp.bfloat16), jnp.asarray(KERNEL, jnp.bfloat16)
    want = jax.grad(f, argnums=(0, 1))(x16, k16, "emulation")
    with jax.set_mesh(MESH), override_capability(H100), hopper.interpret_mode():
        xs, ks = jax.device_put(x16, P("data", None)), jax.device_put(k16, P(None, "model"))
        grad = jax.jit(jax.grad(f, argnums=(0, 1)))
        assert "mxfp8_quantize_transposed" in str(jax.make_jaxpr(grad)(xs, ks))
        check("hopper, train mode, data- and column-parallel", grad(xs, ks), want, (P("data", None), P(None, "model")))


def check_errors() -> None:
    w = mx.quantize(jnp.ones((128, 192)))
    with jax.set_mesh(MESH):
        for x_spec, w_spec, want in (
            (P(None, "model"), P(None, "data"), "must split K (and K/32) over the same mesh axes"),
            (P("model", None), P("model", None), "a mesh axis splits two of x's rows"),
            (P("model", None), P(None, "model"), "a mesh axis splits two of x's rows"),
        ):
            x = jax.device_put(jnp.ones((8, 192)), x_spec)
            ws = mx.MXArray(*(jax.device_put(a, w_spec) for a in (w.data, w.scale)))
            try:
                mx.mxfp8_matmul(x, ws, out_sharding=P())
            except ValueError as e:
                assert want in str(e), e
                print(f"error: {e}")
            else:
                raise AssertionError(f"accepted: {want}")
        # K = 192 over 2 devices: 96 each, three blocks; over 4 (both axes): 48, not a whole block
        both = P(("data", "model"))
        for call in (
            lambda: mxfp8_linear_ste(jnp.ones((8, 192)), jax.device_put(jnp.ones((192, 64)), P(*both, None))),
            lambda: mx.mxfp8_matmul(jax.device_put(jnp.ones((8, 192)), P(None, *both)), w),
        ):
            try:
                call()
            except ValueError as e:
                assert "into 4 shards of 48 elements, not a whole number of 32-element MXFP8 blocks" in str(e), e
                print(f"error: {e}")
            else:
                raise AssertionError("a split block was accepted")


def check_more_layouts() -> None:
    """What a review found broken (2026-12-01): each now equals the unsplit call."""
    w = mx.quantize(jnp.asarray(KERNEL.T))  # [N, K] = [128, 256]
    x3 = jnp.asarray(np.resize(X, (2, 4, 256)))  # [B, T, K]
    c3 = jnp.asarray(np.resize(C, (2, 4, 128)))
    f = lambda x, k: jnp.sum(c3 * mxfp8_linear_ste(x, k, out_dtype=jnp.float32))  # noqa: E731
    want = jax.grad(f, argnums=(0, 1))(x3, jnp.asarray(KERNEL))
    with jax.set_mesh(MESH):  # the sequence axis split: the kernel gradient contracts B and T without a reshape
        xs, ks = jax.device_put(x3, P(None, "data", None)), jax.device_put(jnp.asarray(KERNEL), P(None, "model"))
        check(
            "train mode, T split",
            jax.jit(jax.grad(f, argnums=(0, 1)))(xs, ks),
            want,
            (P(None, "data"), P(None, "model")),
        )
    want = mx.mxfp8_matmul(jnp.asarray(X), w, out_dtype=jnp.float32)
    with jax.set_mesh(MESH):  # data parallelism with a FlashInferWeight (whole), and eager vmap over split rows
        xs = jax.device_put(jnp.asarray(X), P("data", None))
        check("a FlashInferWeight, rows split", mx.mxfp8_matmul(xs, prepare_weight(w), out_dtype=jnp.float32), want)
        xv = jax.device_put(jnp.asarray(X).reshape(2, 4, 256), P("data", None, None))
        ws = mx.MXArray(*(jax.device_put(a, P("model", None)) for a in (w.data, w.scale)))
        got = jax.vmap(lambda a, b: mx.mxfp8_matmul(a, b, out_dtype=jnp.float32), in_axes=(0, None))(xv, ws)
        check("eager vmap, rows and N split", got.reshape(8, 128), want)
    # eager calls on split operands compile once per shape
    from mxfp8_xla import matmul

    with jax.set_mesh(MESH):
        xs = jax.device_put(jnp.asarray(X), P("data", None))
        mx.mxfp8_matmul(xs, w)
        before = matmul._split_product._cache_size()
        mx.mxfp8_matmul(xs, w)
        assert matmul._split_product._cache_size() == before
    # no mesh context: x split on K (a concrete array's mesh), the weight whole
    xs = jax.device_put(jnp.asarray(X), NamedSharding(MESH, P(None, "model")))
    check("no mesh context, K split on x only", mx.mxfp8_matmul(xs, w, out_dtype=jnp.float32), want)
    # add_rms_norm_matmul with K split on both takes out_sharding too
    ones = jnp.ones(256)
    want = mx.add_rms_norm_matmul(jnp.asarray(X), jnp.asarray(X), ones, w, eps=1e-6, out_dtype=jnp.float32)
    with jax.set_mesh(MESH):
        xs = jax.device_put(jnp.asarray(X), P("data", "model"))
        ws = mx.MXArray(*(jax.device_put(a, P(None, "model")) for a in (w.data, w.scale)))
        got = mx.add_rms_norm_matmul(xs, xs, ones, ws, eps=1e-6, out_dtype=jnp.float32, out_sharding=P("data", None))
        check("add_rms_norm_matmul, K split on both", got, want, (P("data", None), P("data", "model")))
    # an Auto axis stays XLA's: the weight split over it is not gathered onto every device
    mixed = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit, AxisType.Auto))
    with jax.set_mesh(mixed):
        xs = jax.device_put(jnp.asarray(X), P("data", None))
        ws = mx.MXArray(*(jax.device_put(a, NamedSharding(mixed, P("model", None))) for a in (w.data, w.scale)))
        run = jax.jit(lambda x, w: mx.mxfp8_matmul(x, w, out_dtype=jnp.float32))
        assert "all-gather" not in run.lower(xs, ws).compile().as_text()
        check(
            "an Auto axis splitting N, an Explicit one the rows",
            run(xs, ws),
            mx.mxfp8_matmul(jnp.asarray(X), w, out_dtype=jnp.float32),
        )


def check_linen_row_parallel() -> None:
    """Linen ``MXFP8Dense`` with its params placed row-parallel (flax's ``nn.with_partitioning`` asserts rather than
    reshards on Explicit axes) takes ``out_sharding`` too; forward and gradients equal the unsplit layer's."""
    specs = {"kernel": P("model", None), "kernel_q": P(None, "model"), "kernel_scale": P(None, "model"), "bias": P()}
    summed = P("data", None)
    for mode in ("train", "inference"):
        layer = MXFP8Dense(128, mode=mode)
        params = layer.init(jax.random.key(0), jnp.asarray(X))
        f = lambda p, x, out=None, layer=layer: jnp.sum(jnp.asarray(C) * layer.apply(p, x, out_sharding=out))  # noqa: E731
        argnums = (0, 1) if mode == "train" else 1
        want = layer.apply(params, jnp.asarray(X)), jax.grad(f, argnums=argnums)(params, jnp.asarray(X))
        with jax.set_mesh(MESH):
            placed = {"params": {k: jax.device_put(v, specs[k]) for k, v in params["params"].items()}}
            x = jax.device_put(jnp.asarray(X), P("data", "model"))
            y = jax.jit(functools.partial(layer.apply, out_sharding=summed))(placed, x)
            grads = jax.jit(jax.grad(functools.partial(f, out=summed), argnums=argnums))(placed, x)
            check(f"Linen {mode} mode, row-parallel", (y, grads), want)
            assert y.sharding.is_equivalent_to(NamedSharding(MESH, summed), 2)


def check_second_derivatives() -> None:
    """Train mode's Hessian-vector products (in x and the kernel together) on column-parallel, row-parallel and
    data-parallel operands equal the unsplit ones, each split as its primal."""
    v_x, v_k = RNG.standard_normal(X.shape).astype(np.float32), RNG.standard_normal(KERNEL.shape).astype(np.float32)

    def hvp(x, kernel, v_x, v_k, out_sharding=None):
        def loss(x, kernel):
            return jnp.sum(mxfp8_linear_ste(x, kernel, out_dtype=jnp.float32, out_sharding=out_sharding) ** 2)

        def along_v(x, kernel):
            g_x, g_k = jax.grad(loss, (0, 1))(x, kernel)
            return jnp.sum(g_x * v_x) + jnp.sum(g_k * v_k)  # no vdot: it would contract the split rows unresolved

        return jax.grad(along_v, (0, 1))(x, kernel)

    want = jax.jit(hvp)(X, KERNEL, v_x, v_k)
    layouts = {
        "column-parallel": (P("data", None), P(None, "model"), None),
        "row-parallel": (P("data", "model"), P("model", None), P("data", None)),
        "data-parallel": (P("data", None), P(None, None), None),
    }
    for label, (x_spec, kernel_spec, out_sharding) in layouts.items():
        with jax.set_mesh(MESH):
            args = [
                jax.device_put(a, s) for a, s in ((X, x_spec), (KERNEL, kernel_spec), (v_x, x_spec), (v_k, kernel_spec))
            ]
            got = jax.jit(hvp, static_argnums=4)(*args, out_sharding)
        for g, w, spec in zip(got, want, (x_spec, kernel_spec), strict=True):
            # float32 summation order, against the largest entry (the products cancel in some entries)
            assert np.max(np.abs(np.asarray(g) - np.asarray(w))) <= 1e-6 * np.max(np.abs(np.asarray(w))), label
            assert g.sharding.is_equivalent_to(NamedSharding(MESH, spec), 2), (label, g.sharding, spec)
        print(f"mxfp8_linear_ste second derivatives, {label}: equal to the unsharded ones")


def main() -> int:
    check_layer((None, "model"), "column-parallel")
    check_layer(None, "replicated")
    check_row_parallel("train")
    check_row_parallel("inference")
    check_hopper()
    check_more_layouts()
    check_linen_row_parallel()
    check_second_derivatives()
    check_errors()

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
