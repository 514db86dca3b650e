"""The GEMV kernels' float32 and float16 rows on the device: exactness against emulation, then their speed.

Until the twenty-sixth session the hopper backend's CUDA GEMV kernels (1-8 rows) read bf16 rows only, and float32 rows,
Flax layers' default, took its Pallas path (exact, slower) with a warning. Every kernel now has a float32-row twin
(``_xf32``) that quantizes the float32 values directly (rounding them to bf16 first would round twice); float16 rows are
widened to float32 first (exact). This checks them through the library's route (``hopper.matmul``):

1. ``edges``: for 1 row, the second of 2, and a row of 8 (the tensor-core kernel; the weight tiled to
   ``cuda_gemv.MMA_MIN_N`` rows), in float32, float16 and (the control) bf16: the launches traced must be the GEMV
   kernels, the ``_xf32`` ones for float32 and float16 rows; weight
   scale bytes 0, 1, 254, 255 and an E4M3 NaN byte against emulation (non-finite positions elementwise, the finite
   rest within ``TOLERANCE``); and the in-kernel quantization exactly: an identity weight must return
   ``dequantize(quantize(x))`` bit for bit (up to the sign of zero), for rows holding values that bf16 would round
   onto an E4M3 tie, full float32 mantissas, float32 subnormals, a zero block, the clamped smallest scale and values
   near the largest finite; a block holding an Inf or a NaN must make every output NaN.
2. ``speed`` (``--rounds`` > 0): at 1, 2 and 8 rows and the Llama-3-8B shapes, in one process, each timed with the
   loop timer (bf16 out): bf16 ``jnp.dot`` on bf16 rows (the baseline), the route on bf16 rows, on float32 rows, on
   float16 rows (widened to float32 first, here in a launch of its own: the rows are the loop's inputs), on float32
   rows with the GEMVs off (``MXFP8_XLA_HOPPER_SMALL_M=pallas``: the route before the twenty-sixth session) and XLA's
   own float32-row product with a bf16 weight (``jnp.dot`` after promotion, as ``nn.Dense`` computes it), with each
   one's kernels and the route's error against emulation (float32 out).

    PYTHONPATH=. python3 benchmarks/gemv_f32_check.py [--rounds 3] [--shapes 14336x4096,4096x14336]

Writes ``$OUT/gemv_f32_check.json``; exits 1 if an edge case fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_gemv_probe import (  # noqa: E402
    activation_vectors,
    decoded_activation_mismatches,
    row_of_many_wide,
    second_of_two_rows,
    small_m_kernels,
    weight_edge_errors,
)
from mosaic_sweep import dequant_bf16, edge_operands, identity_weight, operands, reference, rel_err  # noqa: E402
from timing import environment, finish_checks, loop_time, write_json  # noqa: E402

from mxfp8_xla import MXArray  # noqa: E402
from mxfp8_xla.backends import hopper, ptx_launch  # noqa: E402

TOLERANCE = 1e-5
"""Largest relative error (max-abs over the row's finite outputs) against emulation: float32 summation order only."""
SHAPES = "14336x4096,28672x4096,4096x14336,6144x4096"
ROWS = (1, 2, 8)


def route(x: jax.Array, w: MXArray) -> jax.Array:
    """The library's route, float32 out (the checks)."""
    return hopper.matmul(x, w, jnp.float32)


def route_bf16_out(x: jax.Array, w: MXArray) -> jax.Array:
    """The library's route, bf16 out (the timings, as bf16 ``jnp.dot`` writes)."""
    return hopper.matmul(x, w, jnp.bfloat16)


LAYOUTS = {"1 row": route, "second of 2 rows": second_of_two_rows(route), "row of 8": row_of_many_wide(route, 8)}
"""How a ``[1, K]`` row reaches the route: alone, under a zero row, or as row 5 of 8 (the weight tiled wide)."""


def float32_row(k: int = 1024) -> np.ndarray:
    """A finite float32 row of ``k`` (32-blocks) that exercises the quantization rule where float32 and bf16 differ."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(k) * 2.0 ** rng.integers(-40, 40, k)).astype(np.float32)  # full mantissas
    x[0:32] = 0.0  # amax 0: scale byte 0
    # amax 448 (e = 0); values just off a tie that bf16 would round onto it (then to even the other way), two ties
    ulp = 2.0**-20
    ties = [448.0, 1.0625 + ulp, 1.1875 - ulp, -2.125 - 2 * ulp, 17.0 + 16 * ulp, 19.0 - 16 * ulp, 1.0625, 19.0]
    x[32:64] = 0.0
    x[32 : 32 + len(ties)] = ties
    x[64:96] = rng.standard_normal(32) * 1e-42  # float32 subnormals below bf16's: e clamps at -127
    x[96:128] = np.clip(rng.standard_normal(32) * 1e38, -3.4e38, 3.4e38)  # near float32's largest
    x[128:160] = rng.standard_normal(32)  # e = 0 or so, full mantissas
    x[160:192] = np.clip(rng.standard_normal(32) * 0.01, -0.05, 0.05)
    x[160] = 448.0 * 2.0**-13 * (1 + 2.0**-20)  # just above e = -13's boundary: e = -12 (bf16 would round it onto it)
    return x


def float16_row(k: int = 1024) -> np.ndarray:
    """A finite float16 row: ties, subnormals, a zero block and values near float16's largest."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(k) * 2.0 ** rng.integers(-12, 12, k)).astype(np.float16)
    x[0:32] = 0
    x[32:64] = 0
    x[32:38] = [448.0, 1.0625, 1.1875, -2.125, 17.0, 19.0]
    x[64:96] = (rng.standard_normal(32) * 1e-6).astype(np.float16)  # float16 subnormals
    x[96:128] = (rng.standard_normal(32) * 2e4).clip(-65504, 65504).astype(np.float16)
    return x


def poisoned(row: np.ndarray) -> dict[str, np.ndarray]:
    """``row`` with one element +inf, -inf or NaN."""
    out = {}
    for name, bad in (("+inf", np.inf), ("-inf", -np.inf), ("nan", np.nan)):
        y = row.copy()
        y[300] = bad
        out[name] = y
    return out


def edge_case(fn: Callable, row: np.ndarray, gemv: bool) -> dict:
    """One layout and dtype: the launches traced (with ``gemv``, as on the device, they must be GEMV kernels, the
    ``_xf32`` ones for float32 and float16 rows), the weight edges against emulation, the activation through an
    identity weight."""
    dtype = row.dtype
    x, w = edge_operands()
    data = np.asarray(w.data).copy()
    data[4, 100] = np.float32("nan")  # an E4M3 NaN byte under a finite scale
    w = MXArray(jnp.asarray(data), w.scale)
    x = x.astype(dtype)
    eye = identity_weight(row.size)
    xs = jnp.asarray(row)[None]
    kernels = sorted(set(ptx_launch.traced_launches(fn, x[:1], w) + ptx_launch.traced_launches(fn, xs, eye)))
    case = {"kernels": kernels}
    problems = []
    float32_rows = dtype != jnp.bfloat16
    if gemv and (not kernels or any(("_xf32_" in k) != float32_rows for k in kernels)):
        rows = "float32" if float32_rows else "bf16"
        problems.append(f"kernels {kernels}, expected the GEMV kernels for {rows} rows")
    differ, err = weight_edge_errors(fn, x, w)
    case["weight: nonfinite differ (row, col, kernel, emulation)"] = differ
    case["weight: finite rel err"] = err
    if differ or err > TOLERANCE:
        problems.append("weight edges")
    mismatches = decoded_activation_mismatches(fn, xs, eye)
    case["activation: mismatches (k, kernel, expected)"] = mismatches[:20]
    if mismatches:
        problems.append(f"activation: {len(mismatches)} of {row.size} differ")
    for name, y in poisoned(row).items():
        nans = int(np.isnan(np.asarray(jax.jit(fn)(jnp.asarray(y)[None], eye))).sum())
        case[f"activation: {name} in one block, outputs NaN (of {row.size})"] = nans
        if nans != row.size:
            problems.append(f"{name}: {nans} NaN outputs")
    return {**case, "problems": problems, "ok": not problems}


def edges(layouts: dict[str, Callable] = LAYOUTS, gemv: bool = True) -> list[dict]:
    """:func:`edge_case` for every layout and dtype: float32 and float16 rows, and the bf16 row of
    ``cuda_gemv_probe.activation_vectors`` as the control (its kernels' bodies were rebuilt with the float32 ones)."""
    cases = []
    for dtype, row in (("float32", float32_row()), ("float16", float16_row()), ("bfloat16", activation_vectors()[0])):
        for layout, fn in layouts.items():
            with small_m_kernels("auto"):
                case = {"dtype": dtype, "layout": layout, **edge_case(fn, row, gemv)}
            cases.append(case)
            print(f"edges {dtype} {layout}: {'ok' if case['ok'] else case['problems']}; kernels {case['kernels']}; "
                  f"weight error {case['weight: finite rel err']:.1e}", flush=True)  # fmt: skip
    return cases


def bf16_dot(x: jax.Array, wb: jax.Array) -> jax.Array:
    """``jnp.dot`` with the weight decoded to bf16 ``[N, K]``; float32 rows promote it to float32, as ``nn.Dense``
    does."""
    return jnp.dot(x, wb.T)


SPEED_VARIANTS = {
    "bf16 jnp.dot": (bf16_dot, "bf16", "bf16 weight", "auto"),
    "route bf16 rows": (route_bf16_out, "bf16", "mxfp8", "auto"),
    "route float32 rows": (route_bf16_out, "float32", "mxfp8", "auto"),
    "route float16 rows": (route_bf16_out, "float16", "mxfp8", "auto"),
    "route float32 rows, GEMVs off": (route_bf16_out, "float32", "mxfp8", "pallas"),
    "jnp.dot float32 rows, bf16 weight": (bf16_dot, "float32", "bf16 weight", "auto"),
}
"""label -> (function, its rows, its weight, ``MXFP8_XLA_HOPPER_SMALL_M``)."""


def speed(n: int, k: int, m: int, rounds: int) -> dict:
    """Every one of :data:`SPEED_VARIANTS` at one shape: median us over ``rounds``, ratio to bf16 ``jnp.dot``, the
    launches it traced (bf16 out), and the route's error against emulation (float32 out)."""
    sets = operands(n, k, m)
    rows = {"bf16": [x for x, _ in sets]}
    rows["float32"] = [jax.random.normal(jax.random.key(100 + i), (m, k), jnp.float32) for i in range(len(sets))]
    rows["float16"] = [x.astype(jnp.float16) for x in rows["float32"]]
    weights = {"mxfp8": [w for _, w in sets], "bf16 weight": [dequant_bf16(w) for _, w in sets]}
    row = {}
    for label, (fn, x_kind, w_kind, choice) in SPEED_VARIANTS.items():
        args = list(zip(rows[x_kind], weights[w_kind], strict=True))
        with small_m_kernels(choice):
            kernels = ptx_launch.traced_launches(fn, *args[0])
            err = rel_err(jax.jit(route)(*args[0]), reference(*args[0])) if w_kind == "mxfp8" else None
            times = [loop_time(fn, args) * 1e6 for _ in range(rounds)]
        row[label] = {"us": statistics.median(times), "rounds_us": times, "kernels": kernels, "rel_err_f32_out": err}
    base = row["bf16 jnp.dot"]["us"]
    for cell in row.values():
        cell["ratio_to_bf16"] = base / cell["us"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds a variant (0: the edges only)")
    parser.add_argument("--shapes", default=SHAPES, help="comma-separated NxK")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated row counts")
    args = parser.parse_args()
    results = {"environment": environment(), "cases": edges()}
    write_json("gemv_f32_check.json", results)
    if args.rounds:
        labels = [label for label in SPEED_VARIANTS if label != "bf16 jnp.dot"]
        print(f"{'M':>2} {'(N, K)':>14} {'bf16 us':>8} " + " ".join(f"{lbl:>30}" for lbl in labels))
        for m in (int(v) for v in args.rows.split(",")):
            for spec in args.shapes.split(","):
                n, k = (int(v) for v in spec.split("x"))
                row = speed(n, k, m, args.rounds)
                results[f"M={m} ({n}, {k})"] = row
                cells = " ".join(
                    f"{row[lbl]['us']:10.1f} us {row[lbl]['ratio_to_bf16']:5.2f}x{'':10}" for lbl in labels
                )
                print(f"{m:>2} {f'({n}, {k})':>14} {row['bf16 jnp.dot']['us']:8.1f} {cells}", flush=True)
                for lbl in labels:
                    print(f"     {lbl}: kernels {row[lbl]['kernels']}, error {row[lbl]['rel_err_f32_out']}", flush=True)
                write_json("gemv_f32_check.json", results)
    return finish_checks("gemv_f32_check.json", results)


if __name__ == "__main__":
    sys.exit(main())
