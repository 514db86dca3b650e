"""The Triton GEMM's K tiling where K is not a multiple of 128: which (bk, split_k) the route should take.

Since the twenty-eighth session the ``hopper`` backend serves any K of whole 32-blocks. Where K / 128 is not whole
(Qwen2.5-7B's MLP width 18944 over 8 shards: K = 2368 = 37 x 64) or is odd (K = 2432 = 19 x 128), the one-row GEMV
kernels (K % 512) do not run, and the Triton GEMM's rule (bk = 128, K split in two while that divides it) leaves
``N / 64`` programs: 56 at N = 3584, where up to 16 rows want about 256. This times the library's route at such
shapes with each candidate config forced in place of ``hopper.default_config`` (the activation's quantization pass
included, as the route runs it), against bf16 ``jnp.dot`` and emulation (``"auto"``'s choice here until then), in
interleaved rounds, medians; each candidate's error against emulation (float32 out).

``cublas`` is the route above 64 rows forced in (both operands decoded to bf16, then cuBLAS): at 17-64 rows it is
the alternative to the Triton GEMM where the Mosaic kernel refuses the shape (N % 128 or K % 128). Where the route
takes the Mosaic kernel, ``mosaic_s<d>`` forces its K split to each divisor ``d`` of K / 128 (its own rule only
doubles the split, so an odd tile count stays unsplit); a candidate that fails to build or run is reported and
skipped. ``--only`` keeps the named candidates (``route`` is the shipped route with its own config).

    PYTHONPATH=. python3 benchmarks/ragged_k_probe.py [--shapes 3584x2368,3584x2432] [--rows 1,16] [--only route,cublas]

Writes ``$OUT/ragged_k_probe.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from unittest import mock

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import dequant_bf16, operands, reference, rel_err  # noqa: E402
from timing import environment, failure, loop_time, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper, hopper_mosaic  # noqa: E402

Candidate = hopper.KernelConfig | hopper_mosaic.MosaicConfig | None


def candidates(m: int, n: int, k: int) -> dict[str, Candidate]:
    """The route's own config (the Mosaic kernel's where it takes the shape; None where it decodes for cuBLAS),
    ``cublas`` (None: the decode-then-cuBLAS route), every (bk, split_k) with bk in 128, 64, 32 dividing K and split_k
    a divisor of K / bk up to 128 programs' worth of splits (at most 76), and where the route takes the Mosaic kernel
    its config with each divisor of K / tile_k as the split (up to 76)."""
    base = hopper.default_config(m, n, k)
    mosaic = hopper.mosaic_config(m, n, k)
    route = mosaic if mosaic is not None else base if hopper.takes_triton(m, n, k) else None
    out = {"route": route, "cublas": None}
    if mosaic is not None:
        tiles = k // mosaic.tile_k
        for split in (d for d in range(1, min(tiles, 76) + 1) if tiles % d == 0):
            out[f"mosaic_s{split}"] = dataclasses.replace(mosaic, split_k=split)
    for bk in (128, 64, 32):
        if k % bk:
            continue
        tiles = k // bk
        for split in (d for d in range(1, min(tiles, 76) + 1) if tiles % d == 0):
            out[f"bk{bk}_s{split}"] = hopper.KernelConfig(
                bm=base.bm, bn=base.bn, bk=bk, split_k=split, num_warps=4, num_stages=4, tile_dequant=True
            )
    return out


def route_with(cfg: Candidate, out_dtype: jnp.dtype = jnp.bfloat16):
    """The library's route with ``cfg`` in place of :func:`hopper.default_config` (a ``MosaicConfig``: of
    :func:`hopper.mosaic_config`); ``None``: the route above 64 rows (no Mosaic, no Triton GEMM)."""

    def traced(x, w):
        if isinstance(cfg, hopper_mosaic.MosaicConfig):
            with mock.patch.object(hopper, "mosaic_config", lambda *_: cfg):
                return hopper.matmul(x, w, out_dtype)
        if cfg is None:
            with (
                mock.patch.object(hopper, "takes_triton", lambda *_: False),
                mock.patch.object(hopper, "mosaic_config", lambda *_: None),
                mock.patch.object(hopper, "_takes_gemv", lambda *_: False),
            ):
                return hopper.matmul(x, w, out_dtype)
        with (
            mock.patch.object(hopper, "default_config", lambda *_: cfg),
            mock.patch.object(hopper, "takes_triton", lambda *_: True),
        ):
            return hopper.matmul(x, w, out_dtype)

    return traced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="3584x2368,3584x2432", help="comma-separated NxK")
    parser.add_argument("--rows", default="1,16", help="comma-separated M (Triton up to 64 rows, Mosaic up to 256)")
    parser.add_argument("--only", help="comma-separated candidate labels to time (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = {"environment": environment()}
    print(results["environment"], flush=True)
    for spec in args.shapes.split(","):
        n, k = (int(v) for v in spec.split("x"))
        for m in (int(r) for r in args.rows.split(",")):
            sets = operands(n, k, m)
            ref = reference(*sets[0])
            fns = {
                "bf16": (lambda x, wb: jnp.dot(x, wb.T), [(x, dequant_bf16(w)) for x, w in sets]),
                "emulation": (lambda x, w: mx.mxfp8_matmul(x, w, backend="emulation"), sets),
            }
            errors = {}
            wanted = args.only.split(",") if args.only else None
            chosen = {label: cfg for label, cfg in candidates(m, n, k).items() if not wanted or label in wanted}
            for label, cfg in list(chosen.items()):
                jax.clear_caches()
                try:
                    errors[label] = rel_err(jax.jit(route_with(cfg, jnp.float32))(*sets[0]), ref)
                except Exception as e:  # noqa: BLE001
                    print(f"    {label:>10}: failed: {failure(e)}", flush=True)
                    del chosen[label]
                    continue
                fns[label] = (route_with(cfg), sets)
            runs = {label: [] for label in fns}
            for _ in range(args.rounds):
                for label, (fn, a) in fns.items():
                    runs[label].append(loop_time(fn, a) * 1e6)
            med = {label: statistics.median(t) for label, t in runs.items()}
            row = {"bf16_us": med["bf16"], "emulation_us": med["emulation"], "configs": {}}
            print(f"({n}, {k}) M={m}: bf16 {med['bf16']:.1f} us, emulation {med['emulation']:.1f} us "
                  f"({med['bf16'] / med['emulation']:.2f}x)", flush=True)  # fmt: skip
            for label, cfg in chosen.items():
                row["configs"][label] = {
                    "config": repr(cfg),
                    "us": med[label],
                    "rounds_us": runs[label],
                    "ratio": med["bf16"] / med[label],
                    "rel_err_f32_out": errors[label],
                }
                if cfg is None:
                    tiling = "decoded, cuBLAS"
                elif isinstance(cfg, hopper_mosaic.MosaicConfig):
                    tiling = f"Mosaic, tile_k {cfg.tile_k}, split {cfg.split_k}"
                else:
                    tiling = f"bk {cfg.bk}, split {cfg.split_k}"
                print(f"    {label:>10}: {med[label]:7.1f} us {med['bf16'] / med[label]:5.2f}x  "
                      f"({tiling}, error {errors[label]:.1e})", flush=True)  # fmt: skip
            results[f"({n}, {k}) M={m}"] = row
            write_json("ragged_k_probe.json", results)


if __name__ == "__main__":
    main()
