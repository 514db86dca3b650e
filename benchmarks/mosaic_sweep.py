"""The ``hopper`` backend's small-M kernels end to end: Triton (Pallas) against Mosaic GPU.

For the Llama-3-8B layer shapes and a few activation row counts, times (device time,
``timing.loop_time`` over independent input sets whose fp8 weights rotate through >= 150 MB,
3x the L2, so no weight is read from L2) from a raw bf16 activation to the bf16
output: ``jnp.dot`` with a bf16 weight (the baseline), the Triton path, and the
Mosaic GPU kernel (``hopper_mosaic.matmul_2d`` after the one-pass activation
quantize+decode) with the split and stages ``hopper.mosaic_kernel_config`` picks. Every
candidate is checked against the emulation backend on the same operands; an edge-case
weight (scale bytes 0, 1, 254, 255) is compared elementwise, also for one activation row
with K split.

Run on the device: ``PYTHONPATH=. python3 benchmarks/mosaic_sweep.py [--edge-only] [--rows 64,256]
[--splits 1,2,4] [--shapes 0,2]`` (``--rows`` replaces the activation row counts 1 and 16; ``--splits`` adds
the Mosaic kernel with K split those ways; ``--shapes`` picks from ``SHAPES`` by index); JSON to
$OUT/mosaic_sweep.json.
Recorded runs: results/mosaic_sweep_h100.* (the first kernel, scales transposed by XLA) and
results/mosaic_sweep_gmem_scales_h100.* (scales read in place), queued timer
(``timing.device_time``); results/mosaic_sweep_mid_m_h200.* (64 and 256 rows against the
backend as then routed) and results/mosaic_sweep[_mid_m]_scales_h200.* (the kernel's scale
bytes turned into factors at load or at use; at use won, and is now the only way), loop
timer, by earlier versions of this script (commits 409a63f and 4715fcb).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import environment, failure, loop_time, rotation_copies, write_json  # noqa: E402

from mxfp8_xla import MXArray, dequantize, quantize  # noqa: E402
from mxfp8_xla.backends import emulation, hopper, hopper_mosaic  # noqa: E402

SHAPES = ((14336, 4096), (4096, 14336), (28672, 4096), (6144, 4096), (4096, 4096))
ROWS = (1, 16)


def operands(n, k, m, copies=None):
    """Independent operand sets; enough that the fp8 weights rotate through >= 150 MB (3x the H100's L2)."""
    copies = copies or rotation_copies(n * k, least=4)
    sets = []
    for i in range(copies):
        kw, ks, kx = jax.random.split(jax.random.key(i), 3)
        w = (jax.random.normal(kw, (n, k), jnp.float32) * 64).astype(jnp.float8_e4m3fn)
        s = jax.random.randint(ks, (n, k // 32), 112, 124).astype(jnp.uint8)
        x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)
        sets.append((x, MXArray(w, s)))
    return sets


def rel_err(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


@jax.jit
def _emulated(x: jax.Array, w: MXArray) -> jax.Array:
    return emulation.matmul(quantize(x), w, jnp.float32)


def timed_check(fn, sets, ref: np.ndarray, tolerance: float) -> dict:
    """``fn`` timed over ``sets`` (``us``, :func:`timing.loop_time`) and its output on the first set against ``ref``
    (``rel_err``, ``ok`` within ``tolerance``); ``error`` instead where it fails to compile or run."""
    try:
        row = dict(us=loop_time(fn, sets) * 1e6, rel_err=rel_err(fn(*sets[0]), ref))
    except Exception as e:  # noqa: BLE001 - reported, the caller goes on
        return dict(error=failure(e))
    return row | dict(ok=row["rel_err"] <= tolerance)


def reference(x: jax.Array, w: MXArray) -> np.ndarray:
    """Emulation's float32 product of a raw activation and a weight: what every probe's kernel must match (compiled
    once per shape and dtype)."""
    return np.asarray(_emulated(x, w))


def dequant_bf16(w: MXArray) -> jax.Array:
    """The weight decoded to bf16 ``[N, K]``: the bf16 baseline's operand."""
    return jax.jit(lambda w: dequantize(w, jnp.bfloat16))(w)


def identity_weight(k: int) -> MXArray:
    """``[k, k]`` identity, scale 1: its product with a raw row is the decoded activation a kernel multiplies."""
    return MXArray(jnp.eye(k, dtype=jnp.float8_e4m3fn), jnp.full((k, k // 32), 127, jnp.uint8))


def edge_operands() -> tuple[jax.Array, MXArray]:
    """A bf16 activation ``[8, 1024]`` and a weight ``[128, 1024]`` with scale bytes 0, 1, 254 and 255 (NaN)."""
    n, k, m = 128, 1024, 8
    kw, kx = jax.random.split(jax.random.key(7))
    w = jax.random.normal(kw, (n, k), jnp.float32).astype(jnp.float8_e4m3fn)
    s = np.full((n, k // 32), 127, np.uint8)
    s[0, :], s[1, 3], s[2, 5], s[3, 0] = 0, 1, 254, 255
    x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16) * 1e-3
    return x, MXArray(w, jnp.asarray(s))


def edge_case_check() -> dict:
    """Scale bytes 0, 1, 254 and 255 (NaN) in the weight; the result must match emulation elementwise."""
    x, q = edge_operands()
    xd = hopper.decode_operand(x)
    ref = np.asarray(emulation.matmul(quantize(x), q, jnp.float32))
    out = np.asarray(hopper_mosaic.matmul_2d(xd, q, jnp.float32))
    split = hopper_mosaic.MosaicConfig(split_k=2)
    one_row = np.asarray(hopper_mosaic.matmul_2d(xd[:1], q, jnp.float32, split))
    finite = np.isfinite(ref)
    ok = finite[:1]
    result = dict(
        nan_positions_match=bool(np.array_equal(np.isnan(out), np.isnan(ref))),
        inf_positions_match=bool(np.array_equal(np.isposinf(out), np.isposinf(ref)))
        and bool(np.array_equal(np.isneginf(out), np.isneginf(ref))),
        nan_columns=int(np.isnan(ref).any(0).sum()),
        inf_columns=int(np.isinf(ref).any(0).sum()),
        max_rel_err_finite=float(np.max(np.abs(out[finite] - ref[finite]) / (np.abs(ref[finite]) + 1e-30))),
        one_row_split_k_nan_match=bool(np.array_equal(np.isnan(one_row), np.isnan(ref[:1]))),
        one_row_split_k_max_rel_err=float(np.max(np.abs(one_row[ok] - ref[:1][ok]) / np.max(np.abs(ref[:1][ok])))),
    )
    print(f"edge cases: {result}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edge-only", action="store_true", help="edge cases and the routed kernel at (4096, 14336)")
    ap.add_argument("--rows", type=lambda t: [int(r) for r in t.split(",")], help="activation row counts, e.g. 32,64")
    ap.add_argument(
        "--splits",
        type=lambda t: [int(r) for r in t.split(",")],
        default=[],
        help="also time the Mosaic kernel with K split these ways (where its config can run), e.g. 1,2,4",
    )
    ap.add_argument("--shapes", type=lambda t: [SHAPES[int(i)] for i in t.split(",")], help="indices into SHAPES")
    args = ap.parse_args()
    env = environment()
    print(env, flush=True)
    rows = []
    try:
        edge = edge_case_check()
    except Exception as e:  # noqa: BLE001 - reported; the sweep goes on to say which configs run
        edge = {"error": failure(e)}
        print(f"edge cases FAILED: {edge}", flush=True)
    if args.edge_only:  # plus the backend's own routing ("auto") at the shape where it picks Mosaic
        routed = []
        for m in ROWS:
            sets = operands(4096, 14336, m)
            fn = lambda x, q: hopper.matmul(x, q, jnp.bfloat16)  # noqa: E731
            err = rel_err(
                jax.jit(fn)(*sets[0]).astype(jnp.float32),
                emulation.matmul(quantize(sets[0][0]), sets[0][1], jnp.float32),
            )
            t = loop_time(fn, sets)
            t_bf16 = loop_time(lambda x, wb: jnp.dot(x, wb.T), [(x, q.data.astype(jnp.bfloat16)) for x, q in sets])
            routed.append(
                dict(
                    n=4096,
                    k=14336,
                    m=m,
                    config=str(hopper.mosaic_config(m, 4096, 14336)),
                    us=t * 1e6,
                    bf16_us=t_bf16 * 1e6,
                    rel_err=err,
                )
            )
            print(f"hopper.matmul auto: {routed[-1]}", flush=True)
        write_json("mosaic_edge_cases.json", dict(environment=env, edge_cases=edge, auto_routing=routed))
        return
    for n, k in args.shapes or SHAPES:
        for m in args.rows or ROWS:
            sets = operands(n, k, m)
            t_bf16 = loop_time(lambda x, wb: jnp.dot(x, wb.T), [(x, q.data.astype(jnp.bfloat16)) for x, q in sets])
            ref = emulation.matmul(quantize(sets[0][0]), sets[0][1], jnp.float32)
            cfg = hopper.mosaic_kernel_config(m, n, k)
            cands = {
                "triton": lambda x, q: hopper.matmul_2d(hopper.quantize_activations(x), q, jnp.bfloat16),
                f"mosaic {cfg}": lambda x, q, cfg=cfg: hopper_mosaic.matmul_2d(
                    hopper.decode_operand(x), q, jnp.bfloat16, cfg
                ),
            }
            for split in args.splits:
                other = dataclasses.replace(cfg, split_k=split)
                if split != cfg.split_k and other.check(m, n, k) is None:
                    cands[f"mosaic {other}"] = lambda x, q, cfg=other: hopper_mosaic.matmul_2d(
                        hopper.decode_operand(x), q, jnp.bfloat16, cfg
                    )
            print(f"== N={n} K={k} M={m}: bf16 jnp.dot {t_bf16 * 1e6:.1f} us", flush=True)
            rows.append(dict(n=n, k=k, m=m, variant="bf16_jnp_dot", us=t_bf16 * 1e6))
            for name, fn in cands.items():
                try:
                    err = rel_err(jax.jit(fn)(*sets[0]).astype(jnp.float32), ref)
                    t = loop_time(fn, sets)
                except Exception as e:  # noqa: BLE001 - a sweep reports every failure and goes on
                    msg = failure(e)
                    print(f"  {name}: FAILED {msg}", flush=True)
                    rows.append(dict(n=n, k=k, m=m, variant=name, error=msg))
                    continue
                print(f"  {name}: {t * 1e6:.1f} us ({t_bf16 / t:.2f}x bf16), rel err {err:.1e}", flush=True)
                rows.append(dict(n=n, k=k, m=m, variant=name, us=t * 1e6, speedup=t_bf16 / t, rel_err=err))
            write_json("mosaic_sweep.json", dict(environment=env, edge_cases=edge, rows=rows))


if __name__ == "__main__":
    main()
