"""The `hopper` backend (or another) inside a user's ``jax.shard_map`` with its default ``check_vma=True``, on the
device.

There each value's type says over which mesh axes it varies (``mxfp8_xla.varying_axes``). The CPU tests trace every
hopper route under the check (tests/varying_axes_cases.py) but cannot run the kernels; this runs them on a
one-device mesh of two Auto axes, whose specs still type x as varying over ``data``: for each route's row count
(docs/benchmarks.md) the product, the fused add-norm product (one bf16 row) and their input and norm-weight
gradients, and train mode's gradients, each against the same call outside any shard_map (equal within one bf16
rounding; ``bit_equal`` says where it is bit for bit), and a per-device result returned as replicated
(``out_specs=P()``), which must be refused; and the product and train mode in a shard_map manual over ``data``
only, on a mesh whose Explicit ``model`` axis splits the weight, where they run shard by shard over it.
``--backend torch`` runs the same through the DLPack bridge's buffer callback on the GPU.

    PYTHONPATH=. python3 benchmarks/manual_mesh_check.py [--backend torch]

Writes ``$OUT/manual_mesh_check.json`` (``manual_mesh_check_torch.json``); exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from explicit_mesh_check import rel_diff  # noqa: E402
from timing import environment, failure, finish_checks  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.ste import mxfp8_linear_ste  # noqa: E402

N, K = 2048, 4096
ROWS = (1, 2, 8, 16, 64, 300, 2048)
"""One row count per hopper route at K = 4096 (docs/benchmarks.md)."""


def _compare(what: str, m: int, run: Callable[[], tuple], want: tuple, tol: float) -> dict:
    """``run()`` (inside the shard_map) against ``want`` (outside it), leaf by leaf."""
    case = {"what": what, "m": m}
    try:
        got = run()
        case["diffs"] = [rel_diff(g, w) for g, w in zip(got, want, strict=True)]
        case["bit_equal"] = all(
            np.array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32)) for g, w in zip(got, want, strict=True)
        )
        case["ok"] = max(case["diffs"]) <= tol
    except Exception as e:
        case.update(ok=False, error=failure(e))
    print(case, flush=True)
    return case


def _partly_manual(
    backend: str, m: int, x: jax.Array, w: mx.MXArray, kernel: jax.Array, c: jax.Array, want: tuple
) -> dict:
    """The product and train mode's gradients in a shard_map manual over ``data`` only, on a mesh whose ``model``
    axis stays Explicit and splits the weight (and kernel) along N: they run shard by shard over ``model`` inside
    it (``mxfp8_xla.per_shard``)."""
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)

    def run() -> tuple:
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, P("data", None))
            ws = mx.MXArray(*(jax.device_put(a, P("model", None)) for a in (w.data, w.scale)))
            ks = jax.device_put(kernel, P(None, "model"))

            def body(x, w, kernel):
                def loss(x, kernel):
                    return jnp.sum(c * mxfp8_linear_ste(x, kernel, backend=backend).astype(jnp.float32))

                return mx.mxfp8_matmul(x, w, backend=backend), *jax.grad(loss, argnums=(0, 1))(x, kernel)

            ins, outs = (P("data"), P(), P()), (P("data"), P("data"), P())
            return jax.jit(jax.shard_map(body, in_specs=ins, out_specs=outs, axis_names={"data"}))(xs, ws, ks)

    return _compare("Explicit model axis inside a shard_map over data", m, run, (*want[0], *want[1]), 2.0**-8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="hopper", help="the backend to run (default: hopper)")
    backend = parser.parse_args().backend
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)

    def checked(f: Callable, in_specs, out_specs) -> Callable:
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs))  # check_vma=True

    keys = jax.random.split(jax.random.key(0), 5)
    w = mx.quantize(jax.random.normal(keys[0], (N, K), jnp.float32) * 0.05)
    kernel = (jax.random.normal(keys[2], (K, N), jnp.float32) * 0.05).astype(jnp.bfloat16)
    norm_weight = (1 + 0.1 * jax.random.normal(keys[4], (K,), jnp.float32)).astype(jnp.bfloat16)
    results = {"env": environment(), "backend": backend, "cases": []}
    print(results["env"], flush=True)
    for m in ROWS:
        x = jax.random.normal(keys[1], (m, K), jnp.bfloat16)
        delta = jax.random.normal(keys[3], (m, K), jnp.bfloat16)
        c = jax.random.normal(keys[1], (m, N), jnp.float32)

        def product(x):
            return (mx.mxfp8_matmul(x, w, backend=backend),)

        def add_norm(x, delta, norm_weight):
            return mx.add_rms_norm_matmul(x, delta, norm_weight, w, eps=1e-5, backend=backend)

        def add_norm_grads(x, delta, norm_weight, c=c):
            def loss(x, delta, norm_weight):
                y, h = add_norm(x, delta, norm_weight)
                return jnp.sum(c * y.astype(jnp.float32)) + jnp.sum(h.astype(jnp.float32))

            return jax.grad(loss, argnums=(0, 1, 2))(x, delta, norm_weight)

        def train_grads(x, kernel, c=c):
            def loss(x, kernel):
                return jnp.sum(c * mxfp8_linear_ste(x, kernel, backend=backend).astype(jnp.float32))

            return jax.grad(loss, argnums=(0, 1))(x, kernel)

        rows, whole = P("data", None), P()
        cases = (
            ("mxfp8_matmul", product, (x,), (rows,), (rows,), 2.0**-8),
            ("add_rms_norm_matmul", add_norm, (x, delta, norm_weight), (rows, rows, whole), (rows, rows), 2.0**-8),
            (
                "add_rms_norm_matmul, gradients",
                add_norm_grads,
                (x, delta, norm_weight),
                (rows, rows, whole),
                (rows, rows, whole),
                1e-5,
            ),
            ("mxfp8_linear_ste, gradients", train_grads, (x, kernel), (rows, whole), (rows, whole), 1e-5),
        )
        for what, f, args, in_specs, out_specs, tol in cases:
            want = jax.jit(f)(*args)
            results["cases"].append(
                _compare(what, m, lambda f=f, a=args, i=in_specs, o=out_specs: checked(f, i, o)(*a), want, tol)
            )
        case = {"what": "a per-device result as replicated", "m": m}
        try:
            checked(lambda x: product(x)[0], rows, whole).trace(x)
            case.update(ok=False, error="accepted")
        except ValueError as e:
            case["ok"] = "out_specs which require replication" in str(e)
            case["error"] = failure(e)
        results["cases"].append(case)
        print(case, flush=True)
        want = (jax.jit(product)(x), jax.jit(train_grads)(x, kernel))
        results["cases"].append(_partly_manual(backend, m, x, w, kernel, c, want))
    name = "manual_mesh_check.json" if backend == "hopper" else f"manual_mesh_check_{backend}.json"
    return finish_checks(name, results)


if __name__ == "__main__":
    sys.exit(main())
