"""MXFP8 products inside a user's ``jax.shard_map`` with its default ``check_vma=True``, run by tests/test_sharding.py
in a subprocess with 4 CPU devices. Prints one line per case, then OK.

There every value's type says over which mesh axes it varies (``mxfp8_xla.varying_axes``). Before these types were
given, the hopper backend's Pallas kernels raised at trace time, its CUDA kernels and the torch bridge returned
per-device results typed alike on every device (so ``out_specs=P()`` silently returned one device's), and the
gradient of a replicated kernel or input raised in the custom_vjp rules. Numbers: the emulation and torch backends
(the torch bridge's buffer callback runs on CPU), forward and gradients against the same functions unsharded. The
hopper backend: traced only, with an H100's capability, for each of its routes (its kernels need the GPU, and jax's
Pallas interpreter does not run under the check; benchmarks/manual_mesh_check.py runs them on the device).
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
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla import varying_axes  # noqa: E402
from mxfp8_xla.backends.select import Capability, override_capability  # noqa: E402
from mxfp8_xla.flax import MXFP8Dense, MXFP8Linear  # noqa: E402
from mxfp8_xla.ste import mxfp8_linear_ste  # noqa: E402

H100 = Capability(platform="gpu", device_kind="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))
MESH = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((8, 256)), jnp.float32)  # [B, K]
C = jnp.asarray(RNG.standard_normal((8, 128)), jnp.float32)  # [B, N]: the loss's weights
KERNEL = jnp.asarray(RNG.standard_normal((256, 128)) * 0.05, jnp.float32)  # [K, N]
NORM = jnp.asarray(1 + 0.1 * RNG.standard_normal(256), jnp.float32)
W = mx.quantize(KERNEL.T)  # [N, K]
W_SPECS = {"replicated": P(), "split along N": P("model")}


def shard_map(f, in_specs, out_specs):
    return jax.jit(jax.shard_map(f, mesh=MESH, in_specs=in_specs, out_specs=out_specs))  # check_vma=True: the default


def check(label: str, got, want) -> None:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    print(f"{label}: equal to the unsharded one")


def loss_weights(columns: int | None = None) -> jax.Array:
    """Inside the shard_map: this device's block of ``C``, its rows over ``data`` and, where N is split over
    ``model``, its ``columns``."""
    rows = C.shape[0] // MESH.shape["data"]
    c = jax.lax.dynamic_slice_in_dim(C, jax.lax.axis_index("data") * rows, rows, 0)
    return c if columns is None else jax.lax.dynamic_slice_in_dim(c, jax.lax.axis_index("model") * columns, columns, 1)


def check_products(backend: str) -> None:
    """x split by rows over ``data``; the weight replicated or split along N over ``model`` (the output too)."""
    for placement, w_spec in W_SPECS.items():

        def loss(x, w, norm):
            y, h = mx.add_rms_norm_matmul(x, x, norm, w, eps=1e-6, out_dtype=jnp.float32, backend=backend)
            y2 = mx.mxfp8_matmul(h, w, out_dtype=jnp.float32, backend=backend)
            return jnp.sum(C * (y + y2))

        def per_device(x, w, norm, w_spec=w_spec):  # the shards' losses summed: the gradients are the whole loss's
            y = mx.mxfp8_matmul(x, w, out_dtype=jnp.float32, backend=backend)
            c = loss_weights(y.shape[1] if w_spec else None)
            yn, h = mx.add_rms_norm_matmul(x, x, norm, w, eps=1e-6, out_dtype=jnp.float32, backend=backend)
            y2 = mx.mxfp8_matmul(h, w, out_dtype=jnp.float32, backend=backend)
            total = jax.lax.psum(jnp.sum(c * (yn + y2)), ("data", "model") if w_spec else "data")
            return y, total

        def grads(x, w, norm):
            return jax.grad(lambda x, norm: per_device(x, w, norm)[1], argnums=(0, 1))(x, norm)

        y, total = shard_map(per_device, (P("data"), w_spec, P()), (P("data", w_spec[0] if w_spec else None), P()))(
            X, W, NORM
        )
        check(f"{backend}, weight {placement}: y", y, mx.mxfp8_matmul(X, W, out_dtype=jnp.float32))
        check(f"{backend}, weight {placement}: add-norm loss", total, loss(X, W, NORM))
        got = shard_map(grads, (P("data"), w_spec, P()), (P("data"), P()))(X, W, NORM)
        check(f"{backend}, weight {placement}: x and norm weight gradients", got, jax.grad(loss, (0, 2))(X, W, NORM))


def check_train(backend: str) -> None:
    """Train mode's gradients: the kernel replicated or split along N; JAX sums each over the axes it is
    replicated on."""
    for placement, spec in (("replicated", P()), ("split along N", P(None, "model"))):

        def per_device(x, k, spec=spec):
            y = mxfp8_linear_ste(x, k, backend=backend, out_dtype=jnp.float32)
            c = loss_weights(y.shape[1] if spec else None)
            return jax.lax.psum(jnp.sum(c * y), ("data", "model") if spec else "data")

        def loss(x, k):
            return jnp.sum(C * mxfp8_linear_ste(x, k, backend=backend, out_dtype=jnp.float32))

        got = shard_map(jax.grad(per_device, argnums=(0, 1)), (P("data"), spec), (P("data"), spec))(X, KERNEL)
        check(f"{backend}, train mode, kernel {placement}: gradients", got, jax.grad(loss, (0, 1))(X, KERNEL))


def check_layers() -> None:
    """Train-mode NNX and Linen layers, their parameters replicated: data-parallel gradients equal the whole batch's."""
    linear = MXFP8Linear(256, 128, mode="train", rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(linear)
    dense = MXFP8Dense(128, mode="train")
    variables = dense.init(jax.random.key(1), X)
    for label, apply, params in (
        ("NNX MXFP8Linear", lambda s, x: nnx.merge(graphdef, s)(x), state),
        ("Linen MXFP8Dense", dense.apply, variables),
    ):

        def loss(params, x, apply=apply):
            return jnp.sum(loss_weights() * apply(params, x))

        def whole(params, x, apply=apply):
            return jnp.sum(C * apply(params, x))

        got = shard_map(
            jax.grad(lambda p, x: jax.lax.psum(loss(p, x), "data"), (0, 1)), (P(), P("data")), (P(), P("data"))
        )
        check(f"{label}, train mode, data-parallel: gradients", got(params, X), jax.grad(whole, (0, 1))(params, X))


def check_partly_manual() -> None:
    """A shard_map manual over ``data`` only, on a mesh whose ``model`` axis stays Explicit and splits the weight (or
    kernel) along N: the product runs shard by shard over ``model`` inside it (``mxfp8_xla.per_shard``), its result
    still typed as varying over ``data``."""
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        x = jax.device_put(X, P("data", None))
        w = mx.MXArray(*(jax.device_put(a, P("model", None)) for a in (W.data, W.scale)))
        kernel = jax.device_put(KERNEL, P(None, "model"))

        def manual_over_data(f, out_specs):
            return jax.jit(jax.shard_map(f, in_specs=(P("data"), P()), out_specs=out_specs, axis_names={"data"}))

        y = manual_over_data(lambda x, w: mx.mxfp8_matmul(x, w, out_dtype=jnp.float32), P("data"))(x, w)
        check("Explicit model axis inside a shard_map over data: y", y, mx.mxfp8_matmul(X, W, out_dtype=jnp.float32))

        def loss(x, k):
            c = loss_weights()
            return jax.lax.psum(jnp.sum(c * mxfp8_linear_ste(x, k, out_dtype=jnp.float32)), "data")

        got = manual_over_data(jax.grad(loss, argnums=(0, 1)), (P("data"), P()))(x, kernel)
        want = jax.grad(lambda x, k: jnp.sum(C * mxfp8_linear_ste(x, k, out_dtype=jnp.float32)), (0, 1))(X, KERNEL)
        check("Explicit model axis inside a shard_map over data: train-mode gradients", got, want)
        check_refused(
            "emulation, Explicit model axis inside a shard_map over data",
            lambda: manual_over_data(lambda x, w: mx.mxfp8_matmul(x, w), P())(x, w),
        )


def check_refused(backend: str, run) -> None:
    """A per-device result returned as replicated (``out_specs=P()``) is refused, not one device's rows."""
    try:
        run()
    except ValueError as e:
        assert "out_specs which require replication" in str(e), e
        print(f"{backend}: a per-device result as replicated refused")
    else:
        raise AssertionError(f"{backend}: a per-device result was returned as replicated")


ROUTES = {
    1: ("one-row CUDA, add-norm fused", "name=mxfp8_gemv_split_c1_r4_addnorm_bf16"),
    2: ("two-row CUDA", "name=mxfp8_gemv_split_c1_r4_m2_bf16"),
    8: ("tensor-core CUDA", "name=mxfp8_gemv_mma_r8_bf16"),
    16: ("Triton", "name=mxfp8_hopper_gemm"),
    64: ("Mosaic GPU", "axis_name=wg"),
    2048: ("decode, then cuBLAS", "name=mxfp8_decode"),
}
"""The hopper backend's route for each row count per device at (N, K) = (14336, 4096), and a mark of it in the
jaxpr (docs/backends.md)."""


def check_hopper_types() -> None:
    """Every hopper route traced inside a checking shard_map: the outputs, and train mode's and the fused add-norm's
    gradients, are typed as varying over ``data``, as x is."""
    n, k = 14336, 4096
    w = mx.quantize(jnp.zeros((n, k), jnp.bfloat16))
    kernel = jax.ShapeDtypeStruct((k, n), jnp.bfloat16)
    norm = jax.ShapeDtypeStruct((k,), jnp.bfloat16)
    with override_capability(H100):
        for rows, (route, mark) in ROUTES.items():
            x = jax.ShapeDtypeStruct((2 * rows, k), jnp.bfloat16)

            def body(x, kernel, norm):
                y, h = mx.add_rms_norm_matmul(x, x, norm, w, eps=1e-6, backend="hopper")
                out = (mx.mxfp8_matmul(x, w, backend="hopper"), y, h)
                out += (mxfp8_linear_ste(x, kernel, backend="hopper"),)
                total = sum(jnp.sum(o.astype(jnp.float32)) for o in out)
                assert all(varying_axes.of(o) == {"data"} for o in out), [jax.typeof(o) for o in out]
                return out, total

            def grads(x, kernel, norm):
                g = jax.grad(lambda *a: body(*a)[1], argnums=(0, 1, 2))(x, kernel, norm)
                assert [varying_axes.of(a) for a in g] == [{"data"}, set(), set()], [jax.typeof(a) for a in g]
                return g

            specs = (P("data"), P(), P())
            forward = jax.make_jaxpr(
                jax.shard_map(lambda *a: body(*a)[0], mesh=MESH, in_specs=specs, out_specs=P("data"))
            )
            assert mark in str(forward(x, kernel, norm)), (rows, route)
            jax.make_jaxpr(jax.shard_map(grads, mesh=MESH, in_specs=specs, out_specs=specs))(x, kernel, norm)
            check_refused(
                f"hopper, {rows} rows ({route})",
                lambda x=x: jax.make_jaxpr(
                    jax.shard_map(
                        lambda x: mx.mxfp8_matmul(x, w, backend="hopper"), mesh=MESH, in_specs=P("data"), out_specs=P()
                    )
                )(x),
            )
            print(f"hopper, {rows} rows ({route}): outputs and gradients typed as varying")


def check_second_derivatives() -> None:
    """Train mode's Hessian-vector product (in x and the kernel together) inside a data-parallel shard_map, the
    losses summed over ``data`` by the user: equal to the unsharded one."""
    v_x = jnp.asarray(RNG.standard_normal(X.shape), jnp.float32)
    v_k = jnp.asarray(RNG.standard_normal(KERNEL.shape) * 0.05, jnp.float32)

    def hvp(x, kernel, v_x, v_k, total=lambda a: a):
        def loss(x, kernel):
            return total(jnp.sum(mxfp8_linear_ste(x, kernel, out_dtype=jnp.float32) ** 2))

        def along_v(x, kernel):
            g_x, g_k = jax.grad(loss, (0, 1))(x, kernel)
            return total(jnp.sum(g_x * v_x)) + jnp.sum(g_k * v_k)

        return jax.grad(along_v, (0, 1))(x, kernel)

    want = jax.jit(hvp)(X, KERNEL, v_x, v_k)
    in_specs = (P("data"), P(), P("data"), P())
    local = lambda *a: hvp(*a, total=lambda v: jax.lax.psum(v, "data"))  # noqa: E731
    got = shard_map(local, in_specs, (P("data"), P()))(X, KERNEL, v_x, v_k)
    for g, w in zip(got, want, strict=True):  # float32 summation order, against the largest entry
        assert np.max(np.abs(np.asarray(g) - np.asarray(w))) <= 1e-6 * np.max(np.abs(np.asarray(w)))
    print("mxfp8_linear_ste second derivatives, data-parallel: equal to the unsharded ones")


def main() -> None:
    for backend in ("emulation", "torch"):
        check_products(backend)
        check_train(backend)
        check_refused(
            backend,
            lambda b=backend: shard_map(lambda x: mx.mxfp8_matmul(x, W, backend=b), P("data"), P())(X),
        )
    check_layers()
    check_partly_manual()
    check_second_derivatives()
    check_hopper_types()
    print("OK")


if __name__ == "__main__":
    sys.exit(main())
