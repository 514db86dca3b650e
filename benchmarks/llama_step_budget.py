"""Where a Llama decode step's time goes, and what that allows the MXFP8 speedup to be.

One process, one GPU: the decode step of ``bench_llama.py``'s model (Llama-3-8B blocks; bf16 with its weights
stored ``[N, K]``, or ``nn.Dense``'s ``[K, N]`` with ``--bf16-layout kn``; MXFP8 with ``backend="auto"``;
``--fuse-projections``: q/k/v and gate/up as one projection each) and, in the same run, each of a block's
projections alone at the step's row count (the batch): bf16 ``jnp.dot`` on an ``[N, K]`` weight and
``mxfp8_matmul`` from the raw bf16 activation, loop timer, weights rotating through >= 150 MB. Per block it
reports the projections' sum, the rest of the step (attention, norms, RoPE, the KV cache, the launches
between them: the step per block minus the bf16 projections), and the step ratio MXFP8 could reach if the
rest stayed as it is and every projection ran at the weight bytes' ceiling, 1.94x of bf16 (``(rest + gemm)
/ (rest + gemm / 1.94)``). The embedding and the 1024-word head are shared by both models and counted in the
rest.

The first H200 runs (bf16 as ``nn.Dense``, before the two options) found that standalone times do not add up
to a step (at 8 rows the bf16 projections alone exceeded the bf16 step), so read "rest" and the ceiling as
rough.

Usage (device): ``PYTHONPATH=. python3 benchmarks/llama_step_budget.py [--layers 4] [--batches 1,8]
[--bf16-layout nk] [--fuse-projections]``;
``--tiny`` runs small dimensions (a CPU smoke test). JSON to ``$OUT/llama_step_budget.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llama import block_config, build_model, decode_step  # noqa: E402
from mosaic_sweep import operands  # noqa: E402
from timing import environment, loop_time, write_json  # noqa: E402

from mxfp8_xla import dequantize, mxfp8_matmul  # noqa: E402
from mxfp8_xla.backends import select_backend  # noqa: E402

CEILING = 1 / (1 / 2 + 1 / 64)  # bf16 bytes per element over MXFP8's (1 + 1/32) / 2: 1.94


def projections(cfg: dict, fused: bool = False) -> dict[str, tuple[int, int]]:
    """A block's seven projections as ``name -> (N, K)``, or its four with q/k/v and gate/up ``fused``."""
    h, heads, kv, d, inter = (
        cfg[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")
    )
    if fused:
        return {"qkv": ((heads + 2 * kv) * d, h), "o": (h, heads * d), "gate_up": (2 * inter, h), "down": (h, inter)}
    return {
        "q": (heads * d, h),
        "k": (kv * d, h),
        "v": (kv * d, h),
        "o": (h, heads * d),
        "gate": (inter, h),
        "up": (inter, h),
        "down": (h, inter),
    }


def projection_times(shapes: dict[str, tuple[int, int]], m: int, copies: int | None = None) -> dict:
    """``name -> {"bf16_us", "mxfp8_us", "backend"}`` for each projection at ``m`` rows, MXFP8 through the backend
    ``"auto"`` picks (as the model's layers do)."""
    out = {}
    for name, (n, k) in shapes.items():
        sets = operands(n, k, m, copies)
        bf16_sets = [(x, dequantize(w, jnp.bfloat16)) for x, w in sets]  # all: 3 small bf16 weights fit in L2
        out[name] = {
            "bf16_us": loop_time(lambda x, wb: jnp.dot(x, wb.T), bf16_sets) * 1e6,
            "mxfp8_us": loop_time(lambda x, w: mxfp8_matmul(x, w, out_dtype=jnp.bfloat16, backend="auto"), sets) * 1e6,
            "backend": select_backend("auto", n=n, k=k, out_dtype=jnp.bfloat16),
        }
    return out


def budget(step_bf16_us: float, step_mxfp8_us: float, layers: int, gemms: dict) -> dict:
    """Per block: the step, the projections' sums, the rest, and the step ratio at the ceiling."""
    gemm_bf16 = sum(g["bf16_us"] for g in gemms.values())
    gemm_mxfp8 = sum(g["mxfp8_us"] for g in gemms.values())
    block_bf16, block_mxfp8 = step_bf16_us / layers, step_mxfp8_us / layers
    rest = block_bf16 - gemm_bf16
    return {
        "block_bf16_us": block_bf16,
        "block_mxfp8_us": block_mxfp8,
        "gemm_bf16_us": gemm_bf16,
        "gemm_mxfp8_us": gemm_mxfp8,
        "rest_bf16_us": rest,
        "rest_mxfp8_us": block_mxfp8 - gemm_mxfp8,
        "step_ratio": step_bf16_us / step_mxfp8_us,
        "gemm_ratio": gemm_bf16 / gemm_mxfp8,
        "step_ratio_at_ceiling": block_bf16 / (rest + gemm_bf16 / CEILING),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batches", default="1,8", help="comma-separated decode batch sizes")
    ap.add_argument("--tiny", action="store_true", help="small dimensions: a CPU smoke test of the script")
    ap.add_argument("--bf16-layout", default="nk", choices=("kn", "nk"), help="the bf16 model's weight layout")
    ap.add_argument("--fuse-projections", action="store_true", help="q/k/v and gate/up as one projection each")
    args = ap.parse_args()
    base = block_config(args.layers, args.tiny)
    batches = [int(b) for b in args.batches.split(",")]
    out = {
        "env": environment(),
        "layers": args.layers,
        "bf16_layout": args.bf16_layout,
        "fuse_projections": args.fuse_projections,
        "rows": [],
    }
    print(out["env"], flush=True)
    steps = {}
    for quantized in (False, True):
        cfg, params = build_model(
            base, quantized=quantized, bf16_layout=args.bf16_layout, fuse_projections=args.fuse_projections
        )
        for batch in batches:
            steps[quantized, batch] = decode_step(cfg, params, batch) * 1e6
        del params
    for batch in batches:
        shapes = projections(base, args.fuse_projections)
        gemms = projection_times(shapes, batch, copies=2 if args.tiny else None)
        row = {
            "batch": batch,
            "projections": gemms,
            **budget(steps[False, batch], steps[True, batch], args.layers, gemms),
        }
        out["rows"].append(row)
        write_json("llama_step_budget.json", out)
        print(
            f"batch {batch}: "
            + ", ".join(f"{k} {g['bf16_us']:.1f}/{g['mxfp8_us']:.1f} ({g['backend']})" for k, g in gemms.items())
            + " us (bf16/mxfp8)",
            flush=True,
        )
        print(
            f"  per block: step {row['block_bf16_us']:.1f} / {row['block_mxfp8_us']:.1f} us "
            f"({row['step_ratio']:.2f}x), projections {row['gemm_bf16_us']:.1f} / {row['gemm_mxfp8_us']:.1f} us "
            f"({row['gemm_ratio']:.2f}x), rest {row['rest_bf16_us']:.1f} / {row['rest_mxfp8_us']:.1f} us; "
            f"at the {CEILING:.2f}x ceiling the step would be {row['step_ratio_at_ceiling']:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
