"""MXFP8 GEMM at Llama-3-8B layer shapes against bf16 ``jnp.dot``, in device time.

Variants (each skipped with its reason where it cannot run on the device):
  bf16          jnp.dot(x_bf16, w_bf16.T), the baseline
  hopper        mxfp8_xla's "hopper" backend, end to end from the raw bf16 activation: one
                CUDA-core GEMV launch at 1 or 2 rows, a tensor-core GEMV launch at 3-8 rows
                (K <= 4096), the Pallas/Triton or Mosaic GPU kernel that decodes the fp8 weight
                in registers up to 256 rows (after its activation pass), exact bf16 operands
                into cuBLAS beyond (docs/backends.md)
  xla_dequant   XLA: activation fake-quantized, weight dequantized to bf16 in HBM, jnp.dot
  emulation     mxfp8_xla's reference backend (float32, Precision.HIGHEST)
  scaled_dot    jax.nn.scaled_dot_general with the mxfp8 config (the JAX-native peer)
  fp8_tensor    per-tensor FP8 jnp.dot (e4m3 x e4m3 -> bf16): the FP8 tensor-core reference

Usage: python benchmarks/bench_gemm.py [--quick] [--skip a,b] [--shapes 28672x4096,...] [--ms 1,16] [--iters 50];
JSON to $OUT/bench_gemm.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import (  # noqa: E402
    bf16_matmul_rate,
    copy_bandwidth,
    environment,
    int_list,
    loop_time,
    positive_int,
    shape_list,
    write_json,
)

import mxfp8_xla as mx  # noqa: E402

SHAPES = [(6144, 4096), (4096, 4096), (14336, 4096), (28672, 4096), (4096, 14336)]
MS = [1, 16, 64, 256, 1024, 2048, 4096]
SETS = 8
WEIGHT_COPIES = 4
DN = (((1,), (1,)), ((), ()))


def fake_quant_bf16(x):
    return mx.dequantize(mx.quantize(x), jnp.bfloat16)


def variants():
    sdg = jax.nn.get_scaled_dot_general_config("mxfp8")
    return {
        "bf16": lambda x, w, wq: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16),
        "hopper": lambda x, w, wq: mx.mxfp8_matmul(x, wq, backend="hopper"),
        "xla_dequant": lambda x, w, wq: jnp.dot(
            fake_quant_bf16(x), mx.dequantize(wq, jnp.bfloat16).T, preferred_element_type=jnp.bfloat16
        ),
        "emulation": lambda x, w, wq: mx.mxfp8_matmul(x, wq, backend="emulation"),
        "scaled_dot": lambda x, w, wq: jax.nn.scaled_dot_general(
            x, w, DN, preferred_element_type=jnp.bfloat16, configs=[sdg, sdg, sdg]
        ),
        "fp8_tensor": lambda x, w, wq: jax.lax.dot_general(
            x.astype(jnp.float8_e4m3fn), wq.data, DN, preferred_element_type=jnp.bfloat16
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer M values")
    ap.add_argument("--skip", default="emulation", help="comma-separated variants to skip")
    ap.add_argument("--shapes", type=shape_list, help="comma-separated NxK weight shapes (default: all of SHAPES)")
    ap.add_argument("--ms", type=int_list, help="comma-separated row counts M (default: MS, or fewer with --quick)")
    ap.add_argument(
        "--iters",
        type=positive_int,
        default=50,
        help="loop rounds a timing (the loop's own dispatch is shared by iters * 8 calls)",
    )
    args = ap.parse_args()
    shapes = args.shapes or SHAPES
    ms = args.ms or ([1, 16, 256, 2048] if args.quick else MS)
    skip = set(filter(None, args.skip.split(",")))
    if unknown := sorted(skip - set(variants())):
        ap.error(f"--skip: unknown variant(s) {unknown}; the variants are {sorted(variants())}")
    if "bf16" in skip:
        ap.error("--skip: bf16 is the baseline every ratio is taken against; it cannot be skipped")

    env = environment()
    bw, rate = copy_bandwidth(), bf16_matmul_rate()
    print(f"{env}  copy {bw / 1e12:.2f} TB/s  bf16 matmul {rate / 1e12:.0f} TFLOP/s", flush=True)
    out = {"env": env, "copy_bytes_per_s": bw, "bf16_flop_per_s": rate, "rows": []}
    fns = {k: v for k, v in variants().items() if k not in skip}
    header = f"{'N':>6} {'K':>6} {'M':>5} " + " ".join(f"{k:>12}" for k in fns)
    print(header + "   (us; ratio = bf16 time / variant time)", flush=True)
    for n, k in shapes:
        keys = jax.random.split(jax.random.key(n + k), WEIGHT_COPIES + SETS)
        ws = [jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02 for i in range(WEIGHT_COPIES)]
        wqs = [mx.quantize(w) for w in ws]
        for m in ms:
            xs = [jax.random.normal(keys[WEIGHT_COPIES + i], (m, k), jnp.bfloat16) for i in range(SETS)]
            sets = [(xs[i], ws[i % WEIGHT_COPIES], wqs[i % WEIGHT_COPIES]) for i in range(SETS)]
            row = {"m": m, "n": n, "k": k}
            ref = np.asarray(mx.mxfp8_matmul(xs[0], wqs[0], out_dtype=jnp.float32, backend="emulation"), np.float64)
            for name, fn in fns.items():
                try:
                    t = loop_time(fn, sets, iters=args.iters)
                    got = np.asarray(jax.jit(fn)(*sets[0]), np.float64)
                    err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
                except Exception as e:  # a variant that cannot run here is reported, not fatal
                    row[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                    continue
                w_bytes = n * k * (2 if name == "bf16" else 1 + 1 / 32)
                moved = w_bytes + m * k * 2 + m * n * 2
                row[name] = {
                    "us": t * 1e6,
                    "tb_per_s": moved / t / 1e12,
                    "tflop_per_s": 2 * m * n * k / t / 1e12,
                    "rel_err_vs_emulation": err,
                }
            base = row["bf16"].get("us")
            cells = []
            for name in fns:
                r = row[name]
                cells.append(f"{r['us']:7.1f}/{base / r['us']:4.2f}" if "us" in r else f"{'n/a':>12}")
            print(f"{n:6d} {k:6d} {m:5d} " + " ".join(f"{c:>12}" for c in cells), flush=True)
            out["rows"].append(row)
            write_json("bench_gemm.json", out)
    # The MXFP8 backends must compute the emulation backend's function: with bf16 output the
    # only difference allowed is the output rounding (~2**-9 relative).
    for r in out["rows"]:
        err = r.get("hopper", {}).get("rel_err_vs_emulation")
        if err is not None and err > 4e-3:
            print(f"  NUMERICS MISMATCH: hopper at M={r['m']} N={r['n']} K={r['k']}: rel err {err:.2e}")
    for r in out["rows"]:
        for name, v in r.items():
            if isinstance(v, dict) and "error" in v:
                print(f"  {name} at M={r['m']} N={r['n']} K={r['k']}: {v['error']}")
                break


if __name__ == "__main__":
    main()
