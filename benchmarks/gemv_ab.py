"""Builds of ``gemv.cu`` against each other in one process: the library's route (``hopper.matmul``) with each build's
PTX, and bf16 ``jnp.dot``, timed in interleaved rounds.

``route_ab.sh`` runs one process per build, each timing bf16, the route, its Pallas path and the edge cases at five
shapes (80-110 s a build at 8 rows); cells move by up to 8 us between processes. Here every build is traced and
compiled first (``cuda_gemv._ptx`` patched to return its PTX while it is traced), then the rounds time bf16 and every
build in turn, so that a drift of the machine lands on all of them alike; the table gives each build's median over
the rounds, its ratio to bf16's median, and its error against emulation (float32 out). A build whose arithmetic was
removed on purpose (``variants/*.json``) has a meaningless error.

    PYTHONPATH=. python3 benchmarks/gemv_ab.py --rows 8 shipped=mxfp8_xla/backends/gemv.ptx no_act_cvt=ab_ptx/a.ptx

A build given as ``LABEL=PATH@THREADS`` is traced with ``cuda_gemv.THREADS_PER_SM[rows]`` set to THREADS, so that its
grid packs that many threads an SM (a build whose kernel holds fewer registers than the shipped one's).

``--repacked LABEL,...`` hands those builds the weight as :func:`repack_units` lays it out (a probe of a load-time
layout, ``variants/mma_repacked.json``); the error is still against emulation's product with the stored weight.

Writes ``$OUT/gemv_ab_m{rows}.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import dequant_bf16, operands, reference, rel_err  # noqa: E402
from timing import environment, loop_time, write_json  # noqa: E402

from mxfp8_xla.backends import cuda_gemv, hopper, ptx_launch  # noqa: E402
from mxfp8_xla.mxarray import MXArray  # noqa: E402


def parse_build(spec: str) -> tuple[str, Path, int | None]:
    """``LABEL=PATH[@THREADS]`` -> (label, path of a PTX build of gemv.cu, threads an SM or None)."""
    label, sep, rest = spec.partition("=")
    path, at, threads = rest.partition("@")
    if not sep or not label or not path or (at and not threads.isdigit()):
        raise argparse.ArgumentTypeError(f"build {spec!r}: expected LABEL=PATH or LABEL=PATH@THREADS")
    return label, Path(path), int(threads) if at else None


def repack_units(w: MXArray) -> MXArray:
    """``w`` with each unit of 8 rows laid out as ``variants/mma_repacked.json``'s kernel reads it: the unit's rows are
    ``8 K`` contiguous bytes in 64-byte pieces of K, each piece's 8 rows in a row (a warp load's 512 bytes), and the
    unit's scale bytes likewise in 4-byte pieces (a warp's 32). The same bytes, so the same ``[N, K]`` shape."""
    n, k = w.shape
    data = w.data.reshape(n // 8, 8, k // 64, 64).transpose(0, 2, 1, 3).reshape(n, k)
    scale = w.scale.reshape(n // 8, 8, k // 128, 4).transpose(0, 2, 1, 3).reshape(n, k // 32)
    return MXArray(data, scale)


def route_with(ptx: str, out_dtype: jnp.dtype = jnp.bfloat16, threads_per_sm: int | None = None):
    """The library's route for raw rows with ``ptx`` as its GEMV kernels' module (and, with ``threads_per_sm``, its
    grids packing that many threads an SM)."""

    def traced(x, w):
        m = x.size // x.shape[-1]
        packed = {} if threads_per_sm is None else {m: threads_per_sm}
        with mock.patch.object(cuda_gemv, "_ptx", lambda: ptx), mock.patch.dict(cuda_gemv.THREADS_PER_SM, packed):
            return hopper.matmul(x, w, out_dtype)

    return traced


def shape_ab(
    n: int,
    k: int,
    m: int,
    builds: list[tuple[str, Path, int | None]],
    rounds: int,
    repacked: frozenset[str] = frozenset(),
) -> dict:
    """bf16 and every build at one shape: median us over ``rounds`` interleaved rounds, ratio, error, kernels
    (``rounds`` 0: the errors and kernels only, on one operand set); the builds in ``repacked`` get
    :func:`repack_units`' weights."""
    sets = operands(n, k, m, copies=None if rounds else 1)
    ref = reference(*sets[0])
    row, fns = {}, {}
    for label, path, threads in builds:
        jax.clear_caches()  # hopper's own jitted pieces must be traced again with this build
        ptx = path.read_text()
        fn = route_with(ptx, threads_per_sm=threads)
        args = [(x, repack_units(w)) for x, w in sets] if label in repacked else sets
        row[label] = {
            "kernels": ptx_launch.traced_launches(fn, *args[0]),
            "rel_err_f32_out": rel_err(jax.jit(route_with(ptx, jnp.float32, threads))(*args[0]), ref),
        }
        fns[label] = (fn, args)
    if not rounds:
        return row
    fns = {"bf16": (lambda x, wb: jnp.dot(x, wb.T), [(x, dequant_bf16(w)) for x, w in sets]), **fns}
    runs = {label: [] for label in fns}
    for _ in range(rounds):
        for label, (fn, args) in fns.items():
            runs[label].append(loop_time(fn, args) * 1e6)
    bf16_us = statistics.median(runs["bf16"])
    out = {"bf16_us": bf16_us, "bf16_rounds_us": runs["bf16"]}
    for label, *_ in builds:
        us = statistics.median(runs[label])
        out[label] = {**row[label], "us": us, "rounds_us": runs[label], "ratio": bf16_us / us}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", type=parse_build, help="LABEL=PATH[@THREADS] of a PTX build of gemv.cu")
    parser.add_argument("--rows", type=int, default=8, help="activation rows")
    parser.add_argument("--shapes", default="14336x4096,28672x4096", help="comma-separated NxK")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (0: errors only)")
    parser.add_argument("--repacked", default="", help="comma-separated labels of builds fed repack_units' weights")
    args = parser.parse_args()
    repacked = frozenset(filter(None, args.repacked.split(",")))
    if not repacked <= {label for label, *_ in args.builds}:
        parser.error(f"--repacked {args.repacked}: not among the builds' labels")
    results = {"environment": environment(), "rows": args.rows}
    results["builds"] = {lbl: f"{p}@{t}" if t else str(p) for lbl, p, t in args.builds}
    results["repacked"] = sorted(repacked)
    print(results["environment"])
    labels = [label for label, *_ in args.builds]
    print(f"{'(N, K)':>14} {'bf16':>7} " + " ".join(f"{lbl:>16}" for lbl in labels) + "  (us median, ratio to bf16)")
    for spec in args.shapes.split(","):
        n, k = (int(v) for v in spec.split("x"))
        row = shape_ab(n, k, args.rows, args.builds, args.rounds, repacked)
        results[f"({n}, {k}) M={args.rows}"] = row
        if not args.rounds:
            errors = ", ".join(f"{lbl}: error {row[lbl]['rel_err_f32_out']:.1e}" for lbl in labels)
            print(f"{f'({n}, {k})':>14} {errors}; kernels {row[labels[0]]['kernels']}", flush=True)
            write_json(f"gemv_ab_m{args.rows}.json", results)
            continue
        cells = " ".join(f"{row[lbl]['us']:7.1f} {row[lbl]['ratio']:5.2f}x  " for lbl in labels)
        print(f"{f'({n}, {k})':>14} {row['bf16_us']:7.1f} {cells}", flush=True)
        for lbl in labels:
            print(f"    {lbl}: rounds {[round(t, 1) for t in row[lbl]['rounds_us']]}, error "
                  f"{row[lbl]['rel_err_f32_out']:.1e}, kernels {row[lbl]['kernels']}", flush=True)  # fmt: skip
        write_json(f"gemv_ab_m{args.rows}.json", results)


if __name__ == "__main__":
    main()
