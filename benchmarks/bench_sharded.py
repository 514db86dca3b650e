"""Tensor-parallel MXFP8 MLP on all local devices vs one device: equality and device time.

For the 2-GPU run of issue 6 (``nvidia-h200-x2``): a Llama-3-8B-sized MLP
(4096 -> 14336 -> 4096, column- then row-parallel) on a ``1 x n_devices`` mesh against
the same MLP on one device, at several token counts. Runs anywhere: on CPU with
``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu`` it is a smoke
test (use ``--small``). JSON to $OUT/bench_sharded.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import device_time, environment, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla import sharding as sh  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="256 -> 512 -> 256 (CPU smoke test)")
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    d, h = (256, 512) if args.small else (4096, 14336)
    devices = jax.devices()
    mesh = Mesh(np.array(devices).reshape(1, len(devices)), ("data", "model"))
    one = Mesh(np.array(devices[:1]).reshape(1, 1), ("data", "model"))
    keys = jax.random.split(jax.random.key(0), 3)
    w_in = mx.quantize(jax.random.normal(keys[0], (h, d), jnp.bfloat16) * 0.02)
    w_out = mx.quantize(jax.random.normal(keys[1], (d, h), jnp.bfloat16) * 0.02)
    out = {"env": environment(), "devices": len(devices), "d": d, "h": h, "rows": []}
    print(out["env"], f"{len(devices)} devices", flush=True)
    placed = {
        "sharded": (mesh, sh.shard_weight(w_in, mesh, "column"), sh.shard_weight(w_out, mesh, "row")),
        "one device": (one, sh.shard_weight(w_in, one, "column"), sh.shard_weight(w_out, one, "row")),
    }
    print(f"{'tokens':>7} {'one device us':>14} {'sharded us':>11} {'speedup':>8} {'rel diff':>9}")
    for m in (1, 16, 256, 2048):
        x = jax.random.normal(keys[2], (m, d), jnp.bfloat16)
        res = {}
        for label, (msh, wi, wo) in placed.items():
            fn = jax.jit(lambda a, u, v, msh=msh: sh.mlp(a, u, v, msh, backend=args.backend, out_dtype=jnp.float32))
            res[label] = (np.asarray(fn(x, wi, wo), np.float64), device_time(fn, [(x, wi, wo)] * 4, calls=5))
        (y1, t1), (ys, ts) = res["one device"], res["sharded"]
        diff = float(np.linalg.norm(ys - y1) / np.linalg.norm(y1))
        out["rows"].append({"tokens": m, "one_device_us": t1 * 1e6, "sharded_us": ts * 1e6, "rel_diff": diff})
        print(f"{m:7d} {t1 * 1e6:14.1f} {ts * 1e6:11.1f} {t1 / ts:7.2f}x {diff:9.1e}", flush=True)
    write_json("bench_sharded.json", out)


if __name__ == "__main__":
    main()
