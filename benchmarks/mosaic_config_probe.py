"""The Mosaic GPU kernel's configs at 128-256 rows, timed against bf16 ``jnp.dot``: the fastest on a jax version.

On jax 0.12.0.1 the routed config at 256 rows ran 23-26% slower than on jax 0.11.2 (docs/benchmark_log.md, "jax 0.12
on the device"); this times the configs around it, each checked against emulation.

    PYTHONPATH=. python3 benchmarks/mosaic_config_probe.py [--rows 128,256] [--route-only | --first N]

The route's config is timed first, then the same config with ``block_loads`` flipped (the weight tile loaded whole or
one 32-column block at a time). ``--route-only`` times the route's config alone; run it with
``MOSAIC_GPU_DUMP_PTXAS=1`` to see ptxas's registers and spills for each compile.

Each config's float32 output is checked against emulation; the probe exits 1 if one is off by more than
``route_check.TOLERANCE``. Writes ``$OUT/mosaic_config_probe.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import operands, reference, timed_check  # noqa: E402
from route_check import TOLERANCE  # noqa: E402
from timing import environment, loop_time, write_json  # noqa: E402

from mxfp8_xla.backends import hopper, hopper_mosaic  # noqa: E402

SHAPES = ((14336, 4096), (28672, 4096))
CONFIGS = tuple(
    hopper_mosaic.MosaicConfig(num_wgs=wgs, tile_k=128, stages=stages, split_k=split)
    for wgs, stages, split in ((2, 2, 1), (2, 1, 1), (1, 2, 1), (1, 3, 1), (2, 2, 2))
)
"""(num_wgs, stages, split_k) at ``tile_k`` 128 (the weight's swizzle width), timed after the route's own config and
its flip."""


def candidates(m: int, n: int, k: int) -> tuple[hopper_mosaic.MosaicConfig, ...]:
    """The route's config for ``m`` rows of ``(n, k)``, the same with ``block_loads`` flipped, then the ``CONFIGS``
    that differ from both and can run."""
    route = hopper.mosaic_config(m, n, k)
    flipped = dataclasses.replace(route, block_loads=not route.block_loads)
    return (route, flipped, *(c for c in CONFIGS if c not in (route, flipped) and c.check(m, n, k) is None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="256", help="comma-separated activation rows")
    ap.add_argument("--route-only", action="store_true", help="only the route's own config")
    ap.add_argument("--first", type=int, help="only the first this many candidates (2: the route's and its flip)")
    args = ap.parse_args()
    env = environment()
    print(env, flush=True)
    rows, failed = [], 0
    for n, k in SHAPES:
        for m in (int(r) for r in args.rows.split(",")):
            sets = operands(n, k, m)
            ref = reference(*sets[0])
            bf16 = loop_time(lambda x, wb: jnp.dot(x, wb.T), [(x, q.data.astype(jnp.bfloat16)) for x, q in sets])
            print(f"== N={n} K={k} M={m}: bf16 {bf16 * 1e6:.1f} us; the route's config first", flush=True)
            for cfg in candidates(m, n, k)[: 1 if args.route_only else args.first]:
                row = dict(n=n, k=k, m=m, config=str(cfg), bf16_us=bf16 * 1e6)
                fn = lambda x, q, cfg=cfg: hopper_mosaic.matmul_2d(hopper.decode_operand(x), q, jnp.float32, cfg)  # noqa: E731
                row |= timed_check(fn, sets, ref, TOLERANCE)
                if "error" in row:
                    print(f"  {cfg}: {row['error']}", flush=True)
                else:
                    failed += not row["ok"]
                    print(
                        f"  {cfg}: {row['us']:.1f} us ({bf16 * 1e6 / row['us']:.2f}x), error {row['rel_err']:.1e}"
                        + ("" if row["ok"] else " MISMATCH")
                    )
                rows.append(row)
            write_json("mosaic_config_probe.json", dict(environment=env, rows=rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
