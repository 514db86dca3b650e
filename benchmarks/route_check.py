"""Every route of the ``hopper`` backend against emulation over a grid of shapes, on the device: a correctness net.

CPU CI cannot run the GPU kernels, and the timing scripts check their errors at the Llama shapes only. The
nineteenth session found the tensor-core GEMV returning rows 4-7 unwritten at K = 128 with 5-8 rows, a shape no run
had used (docs/benchmark_log.md, "The tensor-core GEMV's ALU pipe"). This multiplies raw bf16 rows by a weight at every
(M, N, K) of ``CASES`` through ``hopper.matmul`` (``"auto"``'s routing, float32 out), and prints each case's kernels
and its max-abs relative error against emulation; a case above ``TOLERANCE`` (the routes agree with emulation to about
1e-6, a wrong row to about 1) is a failure, and the script exits 1 if there is one.

``--eager`` calls the product without ``jax.jit``, as a notebook does (until the twenty-fifth session the CUDA
kernels' launch had no eager rule and raised ``NotImplementedError`` there).

``--dtype float32`` (or ``float16``) hands the product activations of that dtype instead of bf16 (Flax layers'
default ``float32`` ones; since the twenty-sixth session the CUDA GEMV kernels read float32 rows, and float16 rows
widened to float32, where they read bf16 rows).

``--ragged`` checks ``RAGGED_CASES`` instead: shapes off the kernels' tiles.

``--out-dtype bfloat16`` (or ``float16``) asks the product for that output dtype instead of float32; a case then
passes within ``TOLERANCE`` plus the dtype's machine epsilon (the rounding of the output). On jax 0.12 the Mosaic GPU
kernel's 16-bit output store did not lower until the thirty-second session, where float32 outputs did.
``--widths`` and ``--depths`` replace ``WIDTHS`` and ``DEPTHS`` in the grid (the Mosaic kernel writes 16-bit outputs
itself only where N gives it enough CTAs without a K split, e.g. N = 14336).

    PYTHONPATH=. python3 benchmarks/route_check.py [--rows 64,65,256,2048] [--eager] [--dtype float32] [--ragged]
        [--out-dtype bfloat16] [--widths 14336] [--depths 4096]

Writes ``$OUT/route_check.json`` (``route_check_eager.json``, ``route_check_float32.json``,
``route_check_ragged.json``, ``route_check_out_bfloat16.json``, ...).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import operands, reference, rel_err  # noqa: E402
from timing import environment, failure, write_json  # noqa: E402

from mxfp8_xla.backends import hopper, ptx_launch  # noqa: E402

ROWS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 64, 65, 256, 2048)
"""Each route's edges: the GEMV kernels (1, 2, 3-8), the Pallas kernels (9-16, up to 64), Mosaic (17-256), cuBLAS."""
DEPTHS = (128, 256, 512, 4096, 8192, 16384)
"""K: the smallest the kernels take, their K-split limits (4096 for the tensor-core GEMV, 8192 for two rows, 16384
for one), and Llama-3-8B's."""
WIDTHS = (1024, 2048)
CASES = tuple(itertools.product(ROWS, WIDTHS, DEPTHS))
"""(M, N, K)."""
RAGGED_CASES = tuple(itertools.product(ROWS, (100, 1000, 16032), (96, 2368, 4608)))
"""(M, N, K) off the kernels' tiles (``--ragged``): N not a multiple of 64 (16032 is Llama-3's vocabulary over 8
shards), K a multiple of 32 but not of 128 (2368 is Qwen2.5-7B's MLP width over 8), or of 512 but above the
tensor-core GEMV's 4096. Until the twenty-eighth session the backend refused them and ``"auto"`` ran emulation."""
TOLERANCE = 1e-4


def check(
    cases: tuple[tuple[int, int, int], ...] = CASES,
    product: Callable = lambda x, w: hopper.matmul(x, w, jnp.float32),
    eager: bool = False,
    dtype: jnp.dtype = jnp.bfloat16,
    tolerance: float = TOLERANCE,
) -> dict[str, dict]:
    """Each case's kernels traced, error and verdict, keyed ``"M=.. N=.. K=.."``; a case that raises fails with the
    exception's type and first line. ``eager``: ``product`` called without ``jax.jit``; ``dtype``: the activation's;
    ``tolerance``: the largest error that passes (:func:`tolerance_for` an output dtype)."""
    results = {}
    run = product if eager else jax.jit(product)
    for m, n, k in cases:
        x, w = operands(n, k, m, copies=1)[0]
        x = x.astype(dtype)
        try:
            error = rel_err(run(x, w), reference(x, w))
            row = {"kernels": ptx_launch.traced_launches(product, x, w), "rel_err": error}
        except Exception as e:  # noqa: BLE001
            row = {"kernels": [], "rel_err": float("nan"), "error": failure(e)}
        results[f"M={m} N={n} K={k}"] = {**row, "ok": bool(row["rel_err"] <= tolerance)}  # NaN fails
    return results


def tolerance_for(out_dtype: jnp.dtype) -> float:
    """The largest error that passes for outputs of ``out_dtype``: ``TOLERANCE``, plus the machine epsilon of a
    16-bit output (rounding the float32 product to it moves an element by at most half its ulp)."""
    out_dtype = jnp.dtype(out_dtype)
    return TOLERANCE if out_dtype == jnp.float32 else TOLERANCE + float(jnp.finfo(out_dtype).eps)


def grid(widths: str | None, depths: str | None) -> tuple[tuple[int, int, int], ...]:
    """``CASES`` with ``widths`` (``"14336,1024"``) and ``depths`` in place of ``WIDTHS`` and ``DEPTHS`` where given."""
    as_ints = lambda text, default: default if text is None else tuple(int(v) for v in text.split(","))  # noqa: E731
    return tuple(itertools.product(ROWS, as_ints(widths, WIDTHS), as_ints(depths, DEPTHS)))


def selected(rows: str | None, cases: tuple[tuple[int, int, int], ...] = CASES) -> tuple[tuple[int, int, int], ...]:
    """The ``cases`` whose M is in ``rows`` (``"64,65"``; ``None``: all); an M outside ``ROWS`` is an error."""
    if rows is None:
        return cases
    wanted = {int(m) for m in rows.split(",")}
    if not wanted <= set(ROWS):
        raise ValueError(f"--rows {rows}: {sorted(wanted - set(ROWS))} outside ROWS {ROWS}")
    return tuple(case for case in cases if case[0] in wanted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="comma-separated M of ROWS to check (default: all of them)")
    parser.add_argument("--eager", action="store_true", help="call the product without jax.jit")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    parser.add_argument("--ragged", action="store_true", help="RAGGED_CASES: shapes off the kernels' tiles")
    parser.add_argument("--out-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--widths", help="comma-separated N in place of WIDTHS (not with --ragged)")
    parser.add_argument("--depths", help="comma-separated K in place of DEPTHS (not with --ragged)")
    args = parser.parse_args()
    if args.ragged and (args.widths or args.depths):
        parser.error("--widths and --depths set the regular grid; --ragged checks RAGGED_CASES")
    cases = selected(args.rows, RAGGED_CASES if args.ragged else grid(args.widths, args.depths))
    out_dtype, tolerance = jnp.dtype(args.out_dtype), tolerance_for(args.out_dtype)
    dtype = "" if args.dtype == "bfloat16" else "_" + args.dtype
    out = "" if args.out_dtype == "float32" else "_out_" + args.out_dtype
    suffix = "_eager" * args.eager + dtype + out + "_ragged" * args.ragged
    results = {"environment": {**environment(), "out_dtype": args.out_dtype}}
    print(results["environment"], flush=True)
    product = lambda x, w: hopper.matmul(x, w, out_dtype)  # noqa: E731
    for m, n, k in cases:
        ((key, row),) = check(((m, n, k),), product, args.eager, jnp.dtype(args.dtype), tolerance).items()
        results[key] = row
        print(f"{key:>22}: {'ok  ' if row['ok'] else 'FAIL'} error {row['rel_err']:.1e} {row['kernels']}"
              + (f" {row['error']}" if "error" in row else ""), flush=True)  # fmt: skip
        write_json(f"route_check{suffix}.json", results)
    failed = [key for key, row in results.items() if key != "environment" and not row["ok"]]
    print(f"{len(cases) - len(failed)} of {len(cases)} cases within {tolerance:.2g}; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
