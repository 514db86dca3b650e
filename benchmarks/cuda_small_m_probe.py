"""Probe: a hand-written Marlin-style CUDA kernel for M <= 16 (``cuda_small_m.cu``) inside ``jax.jit``.

The open question of issue 5 at M <= 16 (docs/benchmark_log.md, "fourth session"): the Mosaic GPU
kernel's warp-specialized pipeline streams the weight at 1.56-1.77x of bf16 with idle consumers and
0.9-1.25x with real ones. Does a kernel without that pipeline do better: many warps, each loading
its fp8 weight bytes from global memory straight into ``mma.sync`` registers, the activation as its
E4M3 values, each 32-block's partial product scaled by both E8M0 factors in float32?

The kernel is compiled here to PTX for compute_89 by the device's ``nvcc`` and launched inside jit
through jaxlib's PTX launcher (``mxfp8_xla.backends.ptx_launch``: the ``triton_kernel_call_ffi`` custom call
that Pallas's Triton backend and jax-triton use; a private API, as jaxlib 0.11.2 spells it), so it is timed by
``timing.loop_time`` like every other kernel here, against bf16 ``jnp.dot`` and the shipped
``hopper`` backend in the same run.

Parts, for the sweep ``--sweep`` names (each one recorded run, ``SWEEPS``):
1. kernel alone at (14336, 4096) and (4096, 14336), M = 1 and 16, the activation pre-quantized:
   a search over warps per CTA, blocks per load round and K split, then other variants at the best
   cell: ``cvt8`` (activation as fp8 bytes, converted in the kernel), ``bits`` (Marlin's bit moves),
   ``none``/``tnone``/``tnonep`` (no decode: wrong, the ceiling of any decode), the ``t*`` variants
   on the weight tiled once by :func:`tile_weight` (``p``: registers double-buffered, ``h``: the
   L2::256B hint); bf16 ``jnp.dot`` and XLA reading the fp8 weight alone in the same run;
2. end to end (raw bf16 activation -> one-pass quantize -> kernel -> K-split sum -> bf16) for the
   five Llama-3-8B shapes, the best cell of a small search per shape, against bf16 ``jnp.dot`` and
   the shipped ``hopper`` backend;
3. an edge-case weight (scale bytes 0, 1, 254, 255 and an E4M3 NaN byte) against emulation, elementwise.

Every timed result is checked against the emulation backend.

What an H200 answered (jax 0.11.2, results/cuda_small_m_probe_*_h200.*):
numerics are the best of any kernel here (1e-7 to 6e-7 from emulation, float32 output), speed is
not yet. Kernel alone, the weight as stored streams at ~2 TB/s (30-37 us; bf16 ``jnp.dot`` 34-37);
tiled, the best cells took 24.5-32.1 us (1.10-1.42x of bf16; one run's (4096, 14336), M = 16 cell
39.5). The no-decode variants time the same as the exact decode. None of these changed it:
double-buffered registers (slower: fewer warps fit), the L2::256B hint, rounds dealt out to the
warps in turn, scale factors from a shared-memory table (25% fewer instructions per round, no
faster, slower at M = 16), a cp.async ring 2-7 rounds deep (no faster, slower at M = 16), and
(``xtraffic``) cutting the activation's L2 traffic: padding rows skipped (``tcvtm``) or one
activation stretch shared by a CTA's warps (``tcvtr``): no faster at (14336, 4096), 25.0-27.0 us
against ``tcvt``'s 28.1 in the same run at (4096, 14336), M = 1 (25.6-27.0 in earlier runs), slower
or equal at M = 16. The tiled weight stream alone (``tload``, best cells) takes 18.5-19.0 us, as long
as XLA reading the bytes (17.5-18.8 us): the access pattern is not the limit. Nsight Compute
(``ncu_small_m.py``) puts the rest on latency: at (14336, 4096), M = 1 the grid fills 0.75 waves,
~25 warps run per SM, 64% of the cycles between a warp's instructions wait on L1TEX loads, and
DRAM runs at 57% of peak against 74% for the loads alone.
End to end the tiled kernel beat the shipped backend at M = 1 on (14336, 4096) and (28672, 4096) in
all three runs (1.11-1.31x of bf16 against 1.01-1.11x), was within 7% of it at (4096, 14336),
M = 1, and mostly lost at M = 16 and at N <= 6144. At scale byte 254 it gives inf where emulation
gives NaN (emulation's decoded weight overflows float32; here only the scaled block sum is formed).
Not shipped: docs/benchmark_log.md, "A Marlin-style CUDA kernel".

Run on the device:
``PYTHONPATH=. python3 benchmarks/cuda_small_m_probe.py [--sweep rowmajor|tiled|prefetch|order|async|xtraffic]``;
JSON to $OUT/cuda_small_m_probe_<sweep>.json, the PTX and ptxas's register report beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import SHAPES, dequant_bf16, edge_operands, operands, reference, rel_err  # noqa: E402
from timing import environment, failure, loop_time, out_dir, write_json  # noqa: E402

from mxfp8_xla import MXArray, quantize  # noqa: E402
from mxfp8_xla.backends import hopper, ptx_launch  # noqa: E402

SOURCE = Path(__file__).with_name("cuda_small_m.cu")
CONFIGS = ((4, 4), (4, 8), (8, 4), (8, 8))  # (warps per CTA, blocks per load round), as instantiated
TILED_CONFIGS = CONFIGS + ((4, 16), (8, 16))
PREFETCH_CONFIGS = ((4, 4), (4, 8), (8, 4))
ORDER_CONFIGS = ((4, 4), (8, 4), (16, 4))
# run by edge_check at warps 4, unroll 4
EDGE_DECODES = ("cvt", "bits", "tcvt", "tcvti", "tcvtl", "tcvta4", "tcvtm", "tcvtr")


def tile_weight(data: jax.Array) -> jax.Array:
    """``[N, K]`` fp8 -> the tiled layout of the kernel's ``TILED`` variants (same shape): per 16 rows and 64 k,
    1 KB ordered (row half, g, t, block of the pair, byte), row ``16r + 8 half + g``, k ``64p + 32 h + 8t + i``."""
    n, k = data.shape
    t = data.reshape(n // 16, 2, 8, k // 64, 2, 4, 8).transpose(0, 3, 1, 2, 5, 4, 6)
    return t.reshape(n, k)


def compile_ptx() -> str:
    """PTX of ``cuda_small_m.cu`` for compute_89 (also logs registers of an sm_90 build)."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    ptx = out_dir() / "cuda_small_m.ptx"
    subprocess.run([nvcc, "-ptx", "-arch=compute_89", "-O3", str(SOURCE), "-o", str(ptx)], check=True)
    info = subprocess.run(
        [nvcc, "-cubin", "-arch=sm_90", "-O3", "-Xptxas", "-v", str(SOURCE), "-o", os.devnull],
        check=True,
        capture_output=True,
        text=True,
    )
    (out_dir() / "cuda_small_m_ptxas.txt").write_text(info.stderr)
    return ptx.read_text()


def kernel_inputs(xq: MXArray, decode: str) -> tuple[jax.Array, jax.Array]:
    """The activation operand (rows padded to 8 or 16) and its scale bytes, as ``decode`` wants them."""
    m, k = xq.shape
    rows = 8 if m <= 8 else 16
    data = jnp.pad(xq.data, ((0, rows - m), (0, 0)))
    scale = jnp.pad(xq.scale, ((0, rows - m), (0, 0)), constant_values=127)
    if decode == "cvt8":
        return data.view(jnp.uint8), scale
    x16 = data.astype(jnp.float16)  # E4M3 values are exact in f16
    if decode == "bits":  # the kernel's bit moves pair bytes 0, 2 and 1, 3 of every 4
        x16 = x16.reshape(rows, k // 4, 4)[:, :, (0, 2, 1, 3)].reshape(rows, k)
    return x16, scale


def run_kernel(x_op, x_scale, w: MXArray, m: int, decode: str, warps: int, unroll: int, split: int) -> jax.Array:
    """Float32 partial sums ``[split, m, N]`` of the probe kernel."""
    n, k = w.shape
    nt = 1 if x_op.shape[0] == 8 else 2
    name = f"mxfp8_small_m_{decode}_nt{nt}_kw{warps}_u{unroll}"
    dims = jnp.array([m, n, k], jnp.int32)
    return ptx_launch.launch(
        w.data.view(jnp.uint8),
        w.scale,
        x_op,
        x_scale,
        dims,
        name=name,
        ptx=PTX,
        grid=(n // (16 * warps if decode in ROW_WARP_DECODES else 16), split),
        warps=warps,
        out_shape=(split, m, n),
        out_dtype=jnp.float32,
    )


ROW_WARP_DECODES = ("tcvtr",)  # each warp its own 16 rows over the CTA's whole K range (ROWWARPS)


def fits(k: int, warps: int, unroll: int, split: int, decode: str = "") -> bool:
    """Whether every warp of every K split gets a whole number of ``unroll``-block rounds."""
    return (k // 32) % (split * (1 if decode in ROW_WARP_DECODES else warps) * unroll) == 0


def end_to_end(x: jax.Array, w: MXArray, cfg: tuple, out_dtype=jnp.bfloat16) -> jax.Array:
    """Raw ``x [M, K]`` -> one-pass quantize -> kernel ``cfg = (decode, warps, unroll, split)`` -> K-split sum."""
    decode, warps, unroll, split = cfg
    m = x.shape[0]
    x_op, x_scale = kernel_inputs(hopper.quantize_activations(x), decode)
    return run_kernel(x_op, x_scale, w, m, decode, warps, unroll, split).sum(axis=0).astype(out_dtype)


def for_decode(w: MXArray, decode: str) -> MXArray:
    """The weight as ``decode`` reads it: tiled for the ``t*`` variants (done once, outside the timed call)."""
    return MXArray(jax.jit(tile_weight)(w.data), w.scale) if decode.startswith("t") else w


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One recorded run: ``fixed`` (decode, warps, unroll, split) cells timed as they are; ``searched`` decodes over
    ``configs``; ``then`` decodes at the best searched cell's warps/unroll/split (those with
    ``ceiling`` at warps 4, unroll 4); the end-to-end search over ``e2e_decodes`` x ``e2e_configs`` (none if empty);
    every search over ``splits``."""

    fixed: tuple = ()
    searched: tuple = ("cvt",)
    configs: tuple = CONFIGS
    then: tuple = ()
    ceiling: bool = False
    e2e_decodes: tuple = ("cvt",)
    e2e_configs: tuple = CONFIGS
    decode_configs: tuple = ()  # (decode, configs) pairs that replace ``configs`` for those searched decodes
    splits: tuple = (1, 2, 4)


SWEEPS = {
    # results/cuda_small_m_probe_rowmajor_h200.*: the weight as stored, [N, K] row-major
    "rowmajor": Sweep(then=("cvt8", "bits", "none")),
    # results/cuda_small_m_probe_tiled_h200.*: the weight tiled once (tile_weight)
    "tiled": Sweep(
        fixed=(("cvt", 4, 4, 4), ("cvt", 8, 4, 2)),
        searched=("tcvt",),
        configs=TILED_CONFIGS,
        then=("tnone",),
        e2e_decodes=("tcvt",),
        e2e_configs=TILED_CONFIGS,
    ),
    # results/cuda_small_m_probe_prefetch_h200.*: the next round's tiles loaded early, the L2::256B hint
    "prefetch": Sweep(
        fixed=(("tcvt", 4, 4, 1), ("tcvt", 4, 4, 4), ("tcvt", 8, 4, 2)),
        searched=("tcvth", "tcvtp", "tcvtph"),
        configs=PREFETCH_CONFIGS,
        then=("tnonep",),
        ceiling=True,
        e2e_decodes=("tcvt", "tcvtp", "tcvtph"),
        e2e_configs=((4, 4), (8, 4)),
    ),
    # results/cuda_small_m_probe_async_h200.*: scale factors from a table, tiles through a cp.async ring; kernel only
    "async": Sweep(
        fixed=(("tcvt", 4, 4, 1), ("tcvt", 4, 4, 4), ("tcvt", 8, 4, 2)),
        searched=("tcvtl", "tcvta3", "tcvta4", "tcvta8"),
        decode_configs=(
            ("tcvtl", ((4, 4), (8, 4))),
            ("tcvta3", ((4, 4),)),
            ("tcvta4", ((2, 4), (4, 4))),
            ("tcvta8", ((2, 4),)),
        ),
        e2e_decodes=(),
    ),
    # results/cuda_small_m_probe_xtraffic_h200.*: padding rows' activation loads skipped (tcvtm), and each warp its own
    # rows over the CTA's K range so the CTA's warps share one activation stretch (tcvtr); neither closed the gap
    "xtraffic": Sweep(
        fixed=(("tcvt", 4, 4, 1), ("tcvt", 4, 4, 4), ("tcvt", 8, 4, 2)),
        searched=("tcvtm", "tcvtr"),
        decode_configs=(("tcvtm", ((4, 4), (8, 4))), ("tcvtr", ((4, 4), (8, 4), (16, 4)))),
        e2e_decodes=("tcvt", "tcvtm", "tcvtr"),
        e2e_configs=((4, 4), (8, 4)),
        splits=(1, 2, 4, 8, 16),
    ),
    # results/cuda_small_m_probe_order_h200.*: the weight stream alone, and rounds dealt out to the warps in turn
    "order": Sweep(
        fixed=(("tcvt", 4, 4, 1), ("tcvt", 4, 4, 4), ("tcvt", 8, 4, 2)),
        searched=("tload", "tloadi", "tcvti"),
        configs=ORDER_CONFIGS,
        e2e_decodes=("tcvt", "tcvti"),
        e2e_configs=ORDER_CONFIGS,
    ),
}


def time_cell(cells: dict, label: str, fn, sets: list, ref: np.ndarray) -> float:
    """Loop time of ``fn`` over ``sets`` (checked against ``ref`` first) into ``cells[label]``; inf if it fails."""
    try:
        err = rel_err(np.asarray(jax.jit(fn)(*sets[0])).sum(axis=0), ref)
        t = loop_time(fn, sets)
    except Exception as e:  # noqa: BLE001
        cells[label] = {"error": failure(e)}
        print(f"  {label}: {failure(e)}")
        return float("inf")
    cells[label] = {"us": t * 1e6, "rel_err": err}
    print(f"  {label}: {t * 1e6:.1f} us, err {err:.1e}")
    return t


def kernel_sweep(results: dict, sweep: Sweep) -> None:
    """Kernel alone at the two wide shapes, M = 1 and 16, the activation already quantized."""
    for (n, k), m in itertools.product(SHAPES[:2], (1, 16)):
        sets = operands(n, k, m)
        ref = reference(*sets[0])
        decodes = {d for d in sweep.searched + sweep.then} | {cell[0] for cell in sweep.fixed}
        prepared = {d: [(*kernel_inputs(quantize(x), d), for_decode(w, d)) for x, w in sets] for d in decodes}
        cells = {}

        def cell(decode, warps, unroll, split, n=n, k=k, m=m, cells=cells, prepared=prepared, ref=ref):
            fn = functools.partial(run_kernel, m=m, decode=decode, warps=warps, unroll=unroll, split=split)
            label = f"({n}, {k}) M={m} {decode} kw{warps} u{unroll} s{split}"
            return time_cell(cells, label, fn, prepared[decode], ref)

        for fixed in sweep.fixed:
            if fits(k, *fixed[1:], fixed[0]):
                cell(*fixed)
        configs = dict(sweep.decode_configs)
        timed = {
            (d, w_, u, s): cell(d, w_, u, s)
            for d in sweep.searched
            for (w_, u), s in itertools.product(configs.get(d, sweep.configs), sweep.splits)
            if fits(k, w_, u, s, d)
        }
        exact = [c for c in timed if "load" not in c[0] and "none" not in c[0]]
        best = min(exact or timed, key=timed.get)
        for decode in sweep.then:
            cell(decode, *((4, 4) if sweep.ceiling else best[1:3]), best[3])
        dot = loop_time(lambda x, w: jnp.dot(x, w.T), [(x, dequant_bf16(w)) for x, w in sets[:3]])
        read = loop_time(lambda w: jnp.max(w.data.view(jnp.uint8), axis=1), [(w,) for _, w in sets])
        print(
            f"  ({n}, {k}) M={m}: jnp.dot bf16 {dot * 1e6:.1f} us, XLA reads the fp8 weight {read * 1e6:.1f} us; "
            f"best exact kernel {best} {timed[best] * 1e6:.1f} us"
        )
        results[f"kernel ({n}, {k}) M={m}"] = {
            "bf16_dot_us": dot * 1e6,
            "xla_read_us": read * 1e6,
            "best": list(best),
            "cells": cells,
        }
        write_json(f"cuda_small_m_probe_{results['sweep']}.json", results)


def e2e(results: dict, sweep: Sweep) -> None:
    """Raw bf16 activation to bf16 output, all five shapes, against bf16 ``jnp.dot`` and the shipped backend."""
    if not sweep.e2e_decodes:
        return
    for (n, k), m in itertools.product(SHAPES, (1, 16)):
        sets = operands(n, k, m)
        ref = reference(*sets[0])
        row = {
            "bf16 jnp.dot": loop_time(lambda x, w: jnp.dot(x, w.T), [(x, dequant_bf16(w)) for x, w in sets]) * 1e6,
            "hopper (shipped)": loop_time(lambda x, w: hopper.matmul(x, w, jnp.bfloat16), sets) * 1e6,
        }
        searched = {}
        for decode in sweep.e2e_decodes:
            dsets = [(x, for_decode(w, decode)) for x, w in sets]
            for (warps, unroll), split in itertools.product(sweep.e2e_configs, sweep.splits):
                cfg = (decode, warps, unroll, split)
                if fits(k, warps, unroll, split, decode):
                    fn = functools.partial(end_to_end, cfg=cfg)
                    searched[cfg] = (loop_time(fn, dsets, iters=20, repeats=3), dsets)
        cfg = min(searched, key=lambda c: searched[c][0])
        dsets = searched[cfg][1]
        out = np.asarray(jax.jit(functools.partial(end_to_end, cfg=cfg, out_dtype=jnp.float32))(*dsets[0]))
        row["cuda probe"] = loop_time(functools.partial(end_to_end, cfg=cfg), dsets) * 1e6
        row["cuda probe config"] = list(cfg)
        row["cuda probe rel_err (float32 out)"] = rel_err(out, ref)
        row["ratio vs bf16"] = row["bf16 jnp.dot"] / row["cuda probe"]
        row["shipped ratio vs bf16"] = row["bf16 jnp.dot"] / row["hopper (shipped)"]
        shown = (f"{key} {v:.3g}" if isinstance(v, float) else f"{key} {v}" for key, v in row.items())
        print(f"({n}, {k}) M={m}: " + ", ".join(shown))
        results[f"e2e ({n}, {k}) M={m}"] = row


def edge_check(results: dict, sweep: Sweep) -> None:
    """Scale bytes 0, 1, 254, 255 and an E4M3 NaN byte in the weight, against emulation elementwise."""
    x, w = edge_operands()
    data = np.asarray(w.data).copy()
    data[4, 100] = np.float32("nan")  # an E4M3 NaN byte under a finite scale
    w = MXArray(jnp.asarray(data), w.scale)
    ref = reference(x, w)
    for decode in EDGE_DECODES:
        fn = jax.jit(functools.partial(end_to_end, cfg=(decode, 4, 4, 2), out_dtype=jnp.float32))
        out = np.asarray(fn(x, for_decode(w, decode)))
        differ = np.argwhere((np.isnan(out) != np.isnan(ref)) | (np.isinf(out) != np.isinf(ref))).tolist()
        fin = np.isfinite(ref) & np.isfinite(out)
        results[f"edge {decode}"] = {
            "nonfinite_differ_at": differ,
            "out_there": [float(out[i, j]) for i, j in differ],
            "emulation_there": [float(ref[i, j]) for i, j in differ],
            "finite_rel_err": rel_err(out[fin], ref[fin]),
        }
        print(f"edge {decode}: {results[f'edge {decode}']}")


PTX = ""  # the compiled kernels, set once by __main__ (CPU tests only trace, and need no nvcc)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default="xtraffic")
    args = parser.parse_args()
    PTX = compile_ptx()
    results = {"environment": environment(), "sweep": args.sweep}
    print(results["environment"])
    for part in (kernel_sweep, edge_check, e2e):
        try:
            part(results, SWEEPS[args.sweep])
        except Exception as e:  # noqa: BLE001
            results[part.__name__] = {"error": failure(e)}
            print(f"{part.__name__}: {failure(e)}")
        write_json(f"cuda_small_m_probe_{args.sweep}.json", results)
