"""Tiles of the one-pass activation quantizer on this jax: which ``[bm, bk]`` tile and warp count is fastest.

The hopper backend quantized activations with ``pallas_quantize.quantize_2d(x, bm=32, bk=256, tile=True)`` (16 rows
at M <= 16), chosen on jax 0.11.2 (docs/benchmark_log.md, "Activation quantization"); on jax 0.12.0.1 that tile took
5-16% longer. This probe times a grid of tiles against the shipped one in the same run, each checked byte for byte
against ``mxfp8_xla.quantize``, and the copy bandwidth (``timing.copy_bandwidth``); its first runs (thirty-sixth
session) moved the shipped tile to ``[16, 256]`` at every M.

    python3 benchmarks/quantize_tile_probe.py [--shapes 4096x4096,8192x14336] [--bms 16,32,64] [--bks 256,512]
        [--warps 2,4,8]      # writes $OUT/quantize_tile_probe.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import (  # noqa: E402
    copy_bandwidth,
    environment,
    failure,
    int_list,
    loop_time,
    same_bytes,
    shape_list,
    write_json,
)

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import pallas_quantize  # noqa: E402

SETS = 8
SHIPPED = (16, 256, 4)  # bm, bk, num_warps of hopper.quantize_activations (32 rows until the thirty-sixth session)


def tiles(bms: list[int], bks: list[int], warps: list[int]) -> list[tuple[int, int, int]]:
    """The shipped tile first, then every other ``(bm, bk, num_warps)`` of the grid."""
    grid = [t for t in itertools.product(bms, bks, warps) if t != SHIPPED]
    return [SHIPPED, *grid]


def time_tile(xs: list[tuple[jax.Array]], want: mx.MXArray, tile: tuple[int, int, int], interpret: bool) -> dict:
    """Seconds per call and byte equality with ``want`` of one tile, or the error it raised."""
    bm, bk, warps = tile
    fn = lambda x: pallas_quantize.quantize_2d(x, bm=bm, bk=bk, num_warps=warps, tile=True, interpret=interpret)  # noqa: E731
    try:
        got = jax.jit(fn)(xs[0][0])
        same = same_bytes(got, want)
        return {"bm": bm, "bk": bk, "num_warps": warps, "seconds": loop_time(fn, xs, iters=20), "bit_exact": same}
    except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
        return {"bm": bm, "bk": bk, "num_warps": warps, "error": failure(e)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=shape_list, default=[(4096, 4096), (8192, 14336)], help="MxK activations")
    ap.add_argument("--bms", type=int_list, default=[16, 32, 64])
    ap.add_argument("--bks", type=int_list, default=[256, 512])
    ap.add_argument("--warps", type=int_list, default=[2, 4, 8])
    ap.add_argument("--interpret", action="store_true", help="Pallas interpret mode (a CPU smoke test)")
    args = ap.parse_args()
    env = environment()
    bw = copy_bandwidth(1 << 24 if args.interpret else 1 << 30)
    print(f"{env}  copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    out = {"env": env, "copy_bytes_per_s": bw, "rows": []}
    for m, k in args.shapes:
        xs = [(jax.random.normal(jax.random.key(i), (m, k), jnp.bfloat16) * 3,) for i in range(SETS)]
        want = jax.jit(mx.quantize)(xs[0][0])
        moved = m * k * (2 + 1 + 1 / 32)
        results = [time_tile(xs, want, t, args.interpret) for t in tiles(args.bms, args.bks, args.warps)]
        shipped = results[0].get("seconds")
        for r in results:
            r |= {"m": m, "k": k}
            if "seconds" in r:
                r["frac_copy"] = moved / r["seconds"] / bw
                r["vs_shipped"] = shipped / r["seconds"] if shipped else None
        ranked = sorted((r for r in results if "seconds" in r), key=lambda r: r["seconds"])
        print(f"M={m} K={k}: tile bm x bk / warps, us, % of copy, shipped time / this time")
        for r in ranked:
            mark = "" if r["bit_exact"] else "  NOT BIT-EXACT"
            tag = "  (shipped)" if (r["bm"], r["bk"], r["num_warps"]) == SHIPPED else ""
            print(
                f"  {r['bm']:3d} x {r['bk']:4d} / {r['num_warps']}  {r['seconds'] * 1e6:8.1f}  "
                f"{100 * r['frac_copy']:3.0f}%  {r['vs_shipped'] or float('nan'):5.3f}x{tag}{mark}",
                flush=True,
            )
        for r in results:
            if "error" in r:
                print(f"  {r['bm']} x {r['bk']} / {r['num_warps']}: {r['error']}")
        out["rows"] += results
    write_json("quantize_tile_probe.json", out)


if __name__ == "__main__":
    main()
