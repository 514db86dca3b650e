"""Sharded MXFP8 cases, run by tests/test_sharding.py in a subprocess with 8 CPU devices.

XLA_FLAGS must be set before jax initializes, which other test modules in the pytest
process have already done; hence a separate process. Prints one line per case.
"""

from __future__ import annotations

import os
import re
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla import sharding as sh  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402
from mxfp8_xla.backends.select import Capability, override_capability  # noqa: E402

H100 = Capability(platform="gpu", device_kind="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))

B, D, H, OUT = 16, 256, 512, 128


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def mesh_of(data: int, model: int) -> Mesh:
    return Mesh(np.array(jax.devices()).reshape(data, model), ("data", "model"))


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, D)), jnp.float32)
    w1 = mx.quantize(jnp.asarray(rng.standard_normal((H, D)) * 0.05, jnp.float32))
    w2 = mx.quantize(jnp.asarray(rng.standard_normal((OUT, H)) * 0.05, jnp.float32))
    h_ref = mx.mxfp8_matmul(x, w1, out_dtype=jnp.float32)
    y_ref = mx.mxfp8_matmul(jax.nn.gelu(h_ref), w2, out_dtype=jnp.float32)

    for data, model in ((1, 8), (2, 4), (8, 1)):
        mesh = mesh_of(data, model)
        w1s, w2s = sh.shard_weight(w1, mesh, "column"), sh.shard_weight(w2, mesh, "row")
        assert w1s.scale.sharding.spec == P("model", None) and w2s.scale.sharding.spec == P(None, "model")
        for backend in ("emulation", "torch"):
            col = jax.jit(lambda a, w, m=mesh, b=backend: sh.column_parallel(a, w, m, out_dtype=jnp.float32, backend=b))
            h = col(x, w1s)
            # Column-parallel: every device holds all of K; XLA:CPU may still block the dot
            # differently for the narrower N, so allow float32 summation-order differences.
            col_err = rel(h, h_ref)
            assert col_err < 1e-6, (data, model, backend, col_err)
            mlp = jax.jit(lambda a, u, v, m=mesh, b=backend: sh.mlp(a, u, v, m, out_dtype=jnp.float32, backend=b))
            y = mlp(x, w1s, w2s)
            # Row-parallel: the psum adds `model` float32 partial sums in another order.
            err = rel(y, y_ref)
            assert err < 1e-6, (data, model, backend, err)
            print(f"mesh {data}x{model} {backend:9}: column-parallel rel err {col_err:.1e}, MLP rel err {err:.1e}")

    # The hopper backend's Pallas kernels under shard_map (interpret mode on CPU): JAX 0.11
    # refused their outputs with shard_map's varying-axes check on, on the H100.
    mesh = mesh_of(2, 4)
    w1s, w2s = sh.shard_weight(w1, mesh, "column"), sh.shard_weight(w2, mesh, "row")
    for rows in (B, 10 * B):  # per device 8 rows (the Pallas GEMM) and 80 (decode, then dot)
        xr = jnp.tile(x, (rows // B, 1))
        with override_capability(H100), hopper.interpret_mode():
            y = sh.mlp(xr, w1s, w2s, mesh, out_dtype=jnp.float32, backend="hopper")
        err = rel(y, jnp.tile(y_ref, (rows // B, 1)))
        assert err < 1e-6, (rows, err)
        print(f"mesh 2x4 hopper (interpret), {rows} rows: MLP rel err {err:.1e}")

    # Each device quantizes its own K slice: the same bytes as quantizing the whole row.
    mesh = mesh_of(2, 4)
    local_q = jax.jit(
        jax.shard_map(
            lambda a: jax.lax.bitcast_convert_type(mx.quantize(a).data, jnp.uint8),
            mesh=mesh,
            in_specs=P("data", "model"),
            out_specs=P("data", "model"),
        )
    )(x)
    np.testing.assert_array_equal(np.asarray(local_q), np.asarray(mx.quantize(x).data).view(np.uint8))
    print("per-shard activation quantization: bytes identical to unsharded")

    # Bad shardings fail before any XLA work, naming the layer, shapes and reason.
    mesh2 = mesh_of(4, 2)
    for fn, w, m, want in (
        (sh.row_parallel, mx.quantize(jnp.ones((64, 96))), mesh2, "K=96] cannot be split along K over 2"),
        (
            sh.column_parallel,
            mx.quantize(jnp.ones((100, 64))),
            mesh_of(1, 8),
            "N=100, K=64] cannot be split along N over 8",
        ),
    ):
        try:
            fn(jnp.ones((8, w.shape[1])), w, m, name="blk.0")
        except ValueError as e:
            assert want in str(e) and "blk.0" in str(e), str(e)
            print(f"error: {e}")
        else:
            raise AssertionError(f"{fn.__name__} accepted {w.shape}")
    # A batch that does not divide over the data axis: named with the layer and shapes, not shard_map's 'local'.
    mesh24 = mesh_of(2, 4)
    for fn, w, want in (
        (sh.column_parallel, w1, "column-parallel blk.2: x [B=3, K=256] cannot be split along B over the 2 devices"),
        (sh.row_parallel, w2, "row-parallel blk.2: x [B=3, K=512] cannot be split along B over the 2 devices"),
    ):
        try:
            fn(jnp.ones((3, w.shape[1])), w, mesh24, name="blk.2")
        except ValueError as e:
            assert want in str(e) and "mesh axis 'data': B is not a multiple of 2" in str(e), str(e)
            assert "local" not in str(e), str(e)
            print(f"error: {e}")
        else:
            raise AssertionError(f"{fn.__name__} accepted a batch of 3 over a data axis of 2")
    try:
        sh.mlp(x[:3], w1, w2, mesh24)
    except ValueError as e:
        assert "column-parallel mlp.in: x [B=3, K=256] cannot be split along B" in str(e), str(e)
    else:
        raise AssertionError("mlp accepted a batch of 3 over a data axis of 2")
    # data_axis=None gives every device the whole batch: any B works.
    y3 = jax.jit(lambda a: sh.mlp(a, w1, w2, mesh24, data_axis=None, out_dtype=jnp.float32))(x[:3])
    assert rel(y3, y_ref[:3]) < 1e-6, rel(y3, y_ref[:3])
    try:
        sh.shard_weight(mx.quantize(jnp.ones((64, 96))), mesh2, "row", name="blk.1")
    except ValueError as e:
        assert "whole number of 32-element" in str(e)
    else:
        raise AssertionError("shard_weight accepted K=96 over 2")

    # Bad operands fail on their global shapes, before shard_map splits them.
    w = mx.quantize(jnp.ones((64, 128)))
    for exc, want, call in (
        (
            ValueError,
            r"x must be \[B, K\] with K = 128.*got shape \(2, 4, 128\)",
            lambda: sh.column_parallel(jnp.ones((2, 4, 128)), w, mesh2),
        ),
        (
            ValueError,
            r"x must be \[B, K\] with K = 128.*got shape \(2, 4, 128\)",
            lambda: sh.row_parallel(jnp.ones((2, 4, 128)), w, mesh2),
        ),
        (ValueError, r"got shape \(8, 64\)", lambda: sh.row_parallel(jnp.ones((8, 64)), w, mesh2)),
        (
            ValueError,
            r"the mesh has axes \('data', 'model'\), not \['tp'\]",
            lambda: sh.column_parallel(jnp.ones((8, 128)), w, mesh2, model_axis="tp"),
        ),
        (ValueError, r"not \['tp'\]", lambda: sh.shard_weight(w, mesh2, "column", model_axis="tp")),
        (
            ValueError,
            r"^column-parallel layer: model_axis and data_axis are both 'model'; they must be different mesh axes$",
            lambda: sh.column_parallel(jnp.ones((8, 128)), w, mesh2, data_axis="model"),
        ),
        (
            TypeError,
            r"weight must be an MXArray \[N, K\].*got ArrayImpl",
            lambda: sh.shard_weight(jnp.ones((64, 128)), mesh2, "column"),
        ),
        (TypeError, r"out_dtype is int8", lambda: sh.row_parallel(jnp.ones((8, 128)), w, mesh2, out_dtype=jnp.int8)),
        (ValueError, r"kind must be 'column' or 'row'", lambda: sh.shard_weight(w, mesh2, "diagonal")),
        (  # the backend runs per shard, and its error says so: 32 of the 64 rows, not the caller's weight
            mx.BackendUnavailableError,
            r"layer \"up, one device's shard\" \(x \[\.\.\., 128\] @ w \[32, 128\]\.T -> bfloat16\) cannot use backend "
            r"'flashinfer'",
            lambda: sh.column_parallel(jnp.ones((8, 128)), w, mesh2, backend="flashinfer", name="up"),
        ),
        (
            mx.BackendUnavailableError,
            r"layer \"down, one device's shard\" \(x \[\.\.\., 64\] @ w \[64, 64\]\.T -> bfloat16\) cannot use backend",
            lambda: sh.row_parallel(jnp.ones((8, 128)), w, mesh2, backend="flashinfer", name="down"),
        ),
    ):
        try:
            call()
        except exc as e:
            assert re.search(want, str(e)), str(e)
            print(f"error: {e}")
        else:
            raise AssertionError(f"accepted: {want}")
    print("OK")


if __name__ == "__main__":
    sys.exit(main())
