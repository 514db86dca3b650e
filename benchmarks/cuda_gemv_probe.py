"""Probe: one CUDA-core MXFP8 GEMV launch for one activation row inside ``jax.jit``, in two forms.

At one row every MXFP8 call of the Pallas path is three launches (activation pass, GEMM, K-split sum),
and its GEMMs stream the fp8 weight at about half of what XLA reads (docs/benchmark_log.md). One launch
does the whole call: the raw bf16 row in, the output dtype out, the row quantized exactly inside the
kernel while the first weight loads are in flight, the weight streamed as stored.
- The row kernel (``cuda_gemv_rows.cu``, the eighth session's library kernel): every CTA quantizes the
  whole row into shared memory, and each warp streams whole weight rows.
- The K-split kernel (``mxfp8_xla/backends/gemv.cu``, the library's since the ninth session): the
  CTA's threads split K, each quantizes its own chunk of the row into registers, and the CTA streams
  units of R rows and sums over its threads.

Parts:
1. ``sweep``: the six Llama-3-8B projection shapes (the five of ``mosaic_sweep.SHAPES`` and the k/v
   projection (1024, 4096)), M = 1, raw bf16 in and bf16 out: every configuration in ``CONFIGS``
   (row kernels: warps per CTA, rows per warp, chunks per round, register double-buffering, a grid of
   one CTA per CTA's rows or of 16, 24 or 32 resident warps per SM, a register cap; split kernels:
   warps, chunks per thread, rows per unit, CTAs per SM), each checked against emulation; then in the
   same run bf16 ``jnp.dot`` (the weight stored ``[N, K]``), the ``hopper`` backend as shipped (one
   row: the split kernel at ``cuda_gemv.config``'s configuration) and on its Pallas kernels alone
   (``MXFP8_XLA_HOPPER_SMALL_M=pallas``), the best row and the best split configuration (the row
   kernel also with its partial sums scaled instead of its elements, ``EXACT`` 0), and XLA reading
   the fp8 weight alone. ``--library-only``: without the configurations.
2. ``edges``, for the row kernel with the per-element weight scaling, without it, the two-row split kernel, and
   the library path at one row and at two (each with the kernels it traced): weight scale bytes 0, 1, 254, 255 and
   an E4M3 NaN byte against emulation, row by row, NaN and infinity positions elementwise; and the in-kernel activation
   quantization: an identity weight returns the decoded activation, which must equal
   ``dequantize(quantize(x))`` exactly, up to the sign of zero (ties, subnormals, a zero block, the clamped
   smallest scale, values near bf16's largest), and a block holding an Inf or a NaN must make every output NaN.
3. ``--rows 2,4`` (instead of the sweep): the split kernel for 2 or 4 activation rows at the K = 4096 shapes
   against bf16 and the shipped backend (which, since the eleventh session, runs the same two-row kernel at M = 2
   through its own route), checked against emulation; two rows also in units of 8 weight rows (``ROW_CONFIGS``);
   then the edges.
4. ``--mma 1,8,16`` (instead of the sweep): the tensor-core kernel of ``cuda_gemv_mma.cu`` (up to 16 raw bf16 rows,
   exact block-scaled f16 or E4M3 MMAs, ``MMA_CONFIGS``) at every shape against bf16 and the shipped backend, checked
   against emulation, with its weight stream alone (``_loads``, ``_rowloads``); then its edges (one row of 8 or 16).
5. ``--route 3,4,8`` (instead of the sweep): the library's route for 3-8 rows (the tensor-core GEMV kernel of
   ``gemv.cu`` where ``cuda_gemv.config`` takes the shape; ``--min-n`` moves its smallest N) against its Pallas kernels
   alone and bf16 at the K = 4096 shapes, checked against emulation, with the launches it traced; then the edges
   through it (one row of 8, the weight tiled to ``cuda_gemv.MMA_MIN_N`` rows) and through the one-row kernel.
   ``--ptx`` runs another build of ``gemv.cu`` (``gemv_variant_ptx.py``) through the same route; ``--mma-smem N`` makes
   the tensor-core launches ask for N bytes of dynamic shared memory they do not use (``route_ab.sh`` runs several
   such option sets in one device call).
6. ``--llama`` (or ``--llama-only``): the Llama example at Llama-3-8B layer dimensions (4 blocks),
   decode at batch 1: bf16 weights stored ``[N, K]``, MXFP8 as shipped, and MXFP8 on the Pallas
   kernels alone, with and without ``fuse_projections``, in the same process; ``--models`` picks among
   ``LLAMA_MODELS``, which also has ``mxfp8_f32out`` (the GEMVs write float32 and XLA rounds: the A/B for the
   asynchronous V-cache copies of docs/benchmark_log.md, "The Llama decode's two step times").

What an H200 answered (jax 0.11.2; results/cuda_gemv_probe_split_h200.*): the split kernel's best configuration
1.46-1.64x of bf16 at five shapes and 1.00x at (1024, 4096), 2.1-3.4 TB/s, where the row kernel's best gave
1.15-1.41x and 0.72x; 1.0e-7 to 1.8e-7 from emulation; every edge as emulation's with the per-element scaling
(the partial-sum scaling gave finite outputs at scale byte 254); a guarded partial-sum scaling (since removed)
was bit-identical and no faster; so were a split variant where only warp 0 waits for a unit's partial sums
(results/cuda_gemv_probe_split_async_h200.*), the warps' sums added as a tree and a 256-byte L2 prefetch on the
weight loads (results/cuda_gemv_probe_variants_h200.*); all since removed.
``--rows 2,4`` (results/cuda_gemv_probe_rows_h200.*): the split kernel for two rows 1.22-1.41x of bf16 at the K = 4096
shapes (the Pallas path 0.71-1.12x), for four 0.70-0.82x.
``--mma`` (results/cuda_gemv_probe_mma_h200.*, cuda_gemv_probe_mma_second_h200.*): at 8 rows 0.45-1.01x of bf16 and
1.17-1.22x at (28672, 4096), where the Pallas path gave 0.67-1.11x; 0.30-0.67x at 16 rows; 1.4e-7 to 1.2e-6 from
emulation, E4M3 MMAs as f16 ones, every edge as emulation's; the weight stream alone 1.19-1.39x at (14336, 4096) (with
whole-row loads 1.29x), where the one-row kernel's whole product is 1.62-1.67x; a balanced grid, 16 warps, late first
loads, 16-byte loads and staged whole-row loads (since removed; results/cuda_gemv_probe_mma_{balanced,staged}_h200.*)
no closer.

``--route 3,4,8`` (results/cuda_gemv_probe_route_h200.*, fifteenth session): the library's tensor-core kernel 1.18-1.22x
of bf16 at (14336, 4096) and 1.21-1.24x at (28672, 4096), where the Pallas path ran 1.03-1.11x; 3.2e-7 to 1.3e-6 from
emulation; every edge as emulation's.

``--route 8 --mma-smem 163840`` (results/gemv_ring_ab_h200.log, seventeenth session): asking for 160 KB of shared memory
the kernel does not use slowed the tensor-core kernel from 29.7 to 34.2 us at (14336, 4096), same call. The eighteenth
session (results/gemv_mma_smem_ab_h200.log) placed the cost: asking for 14 or 32 KB (static and dynamic together at
most 48 KB) cost nothing (30.3 and 29.4 us against 29.2), asking for 49153 bytes cost as much as 160 KB (34.6 against
30.1). Above 48 KB of dynamic shared memory jaxlib's launcher opts the kernel in and sets
``CU_FUNC_CACHE_PREFER_SHARED``, which takes the SM's L1 down to its smallest. Static plus dynamic above 48 KB with the
dynamic part at most 48 KB fails to launch (CUDA_ERROR_INVALID_VALUE).

Two units ahead (``--rows 2`` and ``--split-only`` as of dae2a31, ``route_ab.sh`` with ``variants/mma_ahead2.json``;
eighteenth session, results/cuda_gemv_probe_ahead2_h200.*, gemv_mma_smem_ab_h200.log): slower than one ahead in every
kernel, at every shape; the split kernels' builds two ahead were removed in the nineteenth session.

Run on the device: ``PYTHONPATH=. python3 benchmarks/cuda_gemv_probe.py [--llama | --llama-only | --mma 1,8,16 |
--route 3,4,8]``;
JSON to $OUT/cuda_gemv_probe.json, the PTX and ptxas's register reports beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import (  # noqa: E402
    SHAPES,
    dequant_bf16,
    edge_operands,
    identity_weight,
    operands,
    reference,
    rel_err,
)
from timing import environment, failure, loop_time, out_dir, write_json  # noqa: E402

from mxfp8_xla import MXArray, dequantize, quantize  # noqa: E402
from mxfp8_xla.backends import cuda_gemv, hopper, ptx_launch  # noqa: E402

SOURCE = Path(__file__).with_name("cuda_gemv_rows.cu")  # the row kernel; includes gemv.cu (-DMXFP8_GEMV_PROBE)
MMA_SOURCE = Path(__file__).with_name("cuda_gemv_mma.cu")  # the tensor-core kernel for 1-16 rows; includes gemv.cu
GEMV_SHAPES = (*SHAPES, (1024, 4096))


class Config(NamedTuple):
    """A kernel of ``gemv.cu`` (built with ``-DMXFP8_GEMV_PROBE``) and its grid."""

    wpc: int  # warps per CTA
    g: int  # rows a warp streams together
    ch: int  # 16-byte chunks per lane, row and round
    pf: int  # 1: the next round's loads double-buffered in registers
    wps: int  # resident warps per SM that loop over the row groups, or 0 for one CTA per WPC * G rows
    minb: int = 0  # > 0: __launch_bounds__ asks for this many CTAs per SM (fewer registers)


class Split(NamedTuple):
    """A K-split kernel of ``gemv.cu`` (the library's form: the CTA's threads share every row, K == 512 * WPC * CPT)
    and its grid: units of R rows, at most ``per_sm`` CTAs per SM looping over them."""

    wpc: int  # warps per CTA
    cpt: int  # 16-element chunks of K per thread
    r: int  # rows a unit
    per_sm: int
    m: int = 1  # activation rows (> 1: the probe's multi-row kernels, k <= 8192)


# ptxas (12.9, sm_90): 48-128 registers; 108 for w8_g2_c4_p0, 80 with minb 3. Split kernels: 60 for c1_r2, 64 for
# c1_r4 (the library's), 128 for c1_r8 and c2_r4.
CONFIGS = (
    tuple(
        Config(wpc, g, ch, pf, wps)
        for wpc, g, ch, pf in ((8, 1, 4, 0), (8, 2, 4, 0), (8, 4, 4, 0), (16, 1, 4, 0), (16, 2, 4, 0), (8, 1, 2, 0))
        for wps in (0, 16, 32)
    )
    + (Config(8, 2, 4, 0, 24, 3), Config(8, 2, 4, 0, 32, 3))
    + tuple(Split(8, 1, 4, p) for p in (2, 4))
    + tuple(Split(8, 1, 8, p) for p in (1, 2))
    + (Split(4, 2, 4, 4), Split(14, 2, 4, 1))
    + tuple(Split(28, 1, r, 1) for r in (2, 4))
)
SMS = 132  # H100 SXM and H200; the grid of a persistent configuration is wps / WPC CTAs per SM


class Mma(NamedTuple):
    """The tensor-core kernel of ``cuda_gemv_mma.cu`` and its grid: W warps split each 16-row tile's K, at most
    ``per_sm`` CTAs per SM loop over the tiles. ``variant``: "" (f16 MMAs of the decoded bytes), "_f8" (E4M3 MMAs,
    the tensor cores' own fp8 sums), "_loads" and "_rowloads" (the weight stream alone, with the kernel's 8-byte loads
    or with a half-warp reading 256 contiguous bytes of one row a load; up to 8 rows, no result)."""

    warps: int
    per_sm: int
    variant: str = ""

    @property
    def label(self) -> str:
        return f"w{self.warps}_sm{self.per_sm}{self.variant}"


MMA_CONFIGS = (Mma(8, 2), Mma(14, 1), Mma(8, 2, "_f8"), Mma(8, 2, "_loads"), Mma(8, 2, "_rowloads"))
MMA_STEP = 8
"""Blocks a warp takes per step: K / 32 must be whole steps of the CTA's warps."""
MMA_ROWS = (1, 2, 8, 16)


def mma_tiles(m: int) -> int:
    """The kernel's 8-row activation tiles (the MMA's n = 8 columns) for ``m`` rows."""
    return 1 if m <= 8 else 2


def mma_smem(m: int, k: int, warps: int) -> int:
    """Dynamic shared memory: the quantized rows (stride k + 32), their factors, each block's largest factor, two
    buffers of the tile's sums."""
    nt = mma_tiles(m)
    return 8 * nt * (k + 32) + nt * k + k // 8 + 2 * warps * 16 * 8 * nt * 4


SMEM_PER_SM = 228 * 1024  # H100 and H200; each resident CTA reserves 1 KB more than it asks for
SMEM_PER_CTA = 227 * 1024


def mma_grid(cfg: Mma, m: int, n: int, k: int) -> int:
    """One CTA per 16-row tile, at most ``per_sm`` per SM and no more than the SM's shared memory holds at once."""
    return min(n // 16, SMS * min(cfg.per_sm, SMEM_PER_SM // (mma_smem(m, k, cfg.warps) + 1024)))


def mma_fits(cfg: Mma, m: int, n: int, k: int) -> bool:
    return (
        1 <= m <= (8 if cfg.variant in ("_loads", "_rowloads") else 16) and n % 16 == 0 and k % 512 == 0
        and (k // 32) % (MMA_STEP * cfg.warps) == 0
        and mma_smem(m, k, cfg.warps) <= SMEM_PER_CTA
    )  # fmt: skip


def gemv_mma(x: jax.Array, w: MXArray, cfg: Mma, out_dtype=jnp.bfloat16) -> jax.Array:
    """``x [M, K]`` (raw bf16, M <= 16) times ``w [N, K]`` -> ``[M, N]`` in ``out_dtype`` on the tensor cores, one
    launch."""
    (m, k), n = x.shape, w.shape[0]
    if x.dtype != jnp.bfloat16 or not mma_fits(cfg, m, n, k):
        raise ValueError(f"gemv_mma: x {x.shape} {x.dtype} @ w {w.shape} does not fit configuration {cfg}")
    name = f"mxfp8_gemv_mma_t{mma_tiles(m)}{cfg.variant}_{'bf16' if out_dtype == jnp.bfloat16 else 'f32'}"
    return ptx_launch.launch(
        w.data.view(jnp.uint8),
        w.scale,
        x,
        jnp.array([m, n, k], jnp.int32),
        name=name,
        ptx=cuda_gemv.entry_ptx(MMA_PTX, name) if MMA_PTX else "",
        grid=(mma_grid(cfg, m, n, k), 1),
        warps=cfg.warps,
        out_shape=(m, n),
        out_dtype=out_dtype,
        smem=mma_smem(m, k, cfg.warps),
    )


def label_of(cfg: tuple) -> str:
    if isinstance(cfg, Split):
        return "split_w{}_c{}_r{}_sm{}".format(*cfg) + (f"_m{cfg.m}" if cfg.m > 1 else "")
    return "w{}_g{}_c{}_p{}_wps{}_b{}".format(*cfg)


def exacts(cfg: tuple) -> tuple[int, ...]:
    """The ``EXACT`` modes instantiated for ``cfg``: split kernels only scale each element (1)."""
    return (1,) if isinstance(cfg, Split) else (1, 0)


def compile_ptx(source: Path = SOURCE, stem: str = "cuda_gemv") -> str:
    """PTX of every variant in ``source`` (with ``gemv.cu``'s probe variants) for compute_90; also logs ptxas's
    registers for sm_90 to ``{stem}_ptxas.txt``."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    ptx = out_dir() / f"{stem}.ptx"
    flags = ["-O3", "-DMXFP8_GEMV_PROBE", str(source)]
    subprocess.run([nvcc, "-ptx", "-arch=compute_90", *flags, "-o", str(ptx)], check=True)
    info = subprocess.run(
        [nvcc, "-cubin", "-arch=sm_90", "-Xptxas", "-v", *flags, "-o", os.devnull],
        check=True,
        capture_output=True,
        text=True,
    )
    (out_dir() / f"{stem}_ptxas.txt").write_text(info.stderr)
    return ptx.read_text()


def fits(cfg: tuple, n: int, k: int) -> bool:
    if isinstance(cfg, Split):
        return k == 512 * cfg.wpc * cfg.cpt and n % cfg.r == 0
    cfg = Config(*cfg)
    return n % (cfg.g if cfg.wps else cfg.wpc * cfg.g) == 0 and k % (512 * cfg.ch) == 0


def grid(cfg: tuple, n: int) -> int:
    """CTAs: one per ``WPC * G`` rows, or (persistent) ``wps / WPC`` per SM if that is fewer; split kernels: one per
    unit of R rows, at most ``per_sm`` per SM."""
    if isinstance(cfg, Split):
        return min(n // cfg.r, SMS * cfg.per_sm)
    cfg = Config(*cfg)
    ctas = -(-n // (cfg.wpc * cfg.g))
    return min(ctas, SMS * cfg.wps // cfg.wpc) if cfg.wps else ctas


def kernel_name(cfg: tuple, exact: int, out_dtype) -> str:
    suffix = "bf16" if out_dtype == jnp.bfloat16 else "f32"
    if isinstance(cfg, Split):
        rows = f"_m{cfg.m}" if cfg.m > 1 else ""
        return f"mxfp8_gemv_split_c{cfg.cpt}_r{cfg.r}{rows}_{suffix}"
    cfg = Config(*cfg)
    bounds = f"_b{cfg.minb}" if cfg.minb else ""
    return f"mxfp8_gemv_w{cfg.wpc}_g{cfg.g}_c{cfg.ch}_p{cfg.pf}_e{exact}{bounds}_{suffix}"


def gemv(x: jax.Array, w: MXArray, cfg: tuple, exact: int = 1, out_dtype=jnp.bfloat16) -> jax.Array:
    """``x [1, K]`` (raw bf16) times ``w [N, K]`` -> ``[1, N]`` in ``out_dtype`` (bf16 or float32), one launch.

    ``exact``: 1 each weight element scaled (the library's), 0 each 16-element partial sum (row kernels only).
    """
    (m, k), n = x.shape, w.shape[0]
    cfg = cfg if isinstance(cfg, Split) else Config(*cfg)
    rows = cfg.m if isinstance(cfg, Split) else 1
    if m != rows or x.dtype != jnp.bfloat16 or not fits(cfg, n, k) or exact not in exacts(cfg):
        raise ValueError(f"gemv: x {x.shape} {x.dtype} @ w {w.shape} does not fit configuration {cfg}, exact {exact}")
    name = kernel_name(cfg, exact, out_dtype)
    split = isinstance(cfg, Split)
    return ptx_launch.launch(
        w.data.view(jnp.uint8),
        w.scale,
        x,
        jnp.array([1, n, k], jnp.int32),
        name=name,
        ptx=cuda_gemv.entry_ptx(PTX, name) if PTX else "",
        grid=(grid(cfg, n), 1),
        warps=cfg.wpc,
        out_shape=(m, n),
        out_dtype=out_dtype,
        smem=0 if split else 4 * k,
    )


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit equal, every NaN counted equal to every NaN."""
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32)))


def bf16_dot_us(sets: list) -> float:
    """The baseline: bf16 ``jnp.dot`` on the sets' weights decoded to bf16 and stored ``[N, K]``, us a call."""
    return loop_time(lambda x, w: jnp.dot(x, w.T), [(x, dequant_bf16(w)) for x, w in sets]) * 1e6


def sweep(results: dict, configs: tuple = CONFIGS) -> None:
    """Every configuration in ``configs`` at every shape, then the best row-streaming and the best K-split one against
    bf16, the library and the Pallas kernels, in the same stretch."""
    heads = ("bf16 dot", "library", "pallas", "best row", "best split", "library", "pallas", "row", "split", "fp8 read")
    print(f"{'(N, K)':>14} " + " ".join(f"{h:>9}" for h in heads) + "  (us, then ratios to bf16)")
    for n, k in GEMV_SHAPES:
        sets = operands(n, k, 1)
        ref = reference(*sets[0])
        cells, by_label = {}, {}
        for cfg in configs:
            if not fits(cfg, n, k):
                continue
            label = label_of(cfg)
            by_label[label] = cfg
            try:
                err = rel_err(np.asarray(jax.jit(lambda x, w, c=cfg: gemv(x, w, c))(*sets[0]), np.float32), ref)
                t = loop_time(lambda x, w, c=cfg: gemv(x, w, c), sets, iters=20, repeats=3)
                cells[label] = {"cfg": list(cfg), "us": t * 1e6, "rel_err_bf16_out": err}
            except Exception as e:  # noqa: BLE001
                cells[label] = {"cfg": list(cfg), "error": failure(e)}
                print(f"  ({n}, {k}) {label}: {failure(e)}")
        ok = {lab: c for lab, c in cells.items() if "us" in c and c["rel_err_bf16_out"] < 1e-2}
        row = {"cells": cells, "library_config": str(cuda_gemv.config(n, k))}
        results[f"({n}, {k})"] = row
        best = {}
        for family in ("row", "split"):
            labels = [lab for lab in ok if lab.startswith("split") == (family == "split")]
            if labels:
                best[family] = by_label[min(labels, key=lambda lab: ok[lab]["us"])]
        shipped = lambda x, w: hopper.matmul(x, w, jnp.bfloat16)  # noqa: E731
        row["bf16_dot_us"] = bf16_dot_us(sets)
        with small_m_kernels("auto"):
            row["library_us"] = loop_time(shipped, sets) * 1e6
            row["rel_err_library_f32_out"] = rel_err(np.asarray(jax.jit(hopper.matmul, static_argnums=2)(
                *sets[0], jnp.float32)), ref)  # fmt: skip
        with small_m_kernels("pallas"):
            row["pallas_us"] = loop_time(shipped, sets) * 1e6
        for family, cfg in best.items():
            cell = row[f"best {family}"] = {"label": label_of(cfg)}
            outs = {}
            for exact in exacts(cfg):
                cell[f"exact{exact}_us"] = loop_time(functools.partial(gemv, cfg=cfg, exact=exact), sets) * 1e6
                outs[exact] = np.asarray(jax.jit(functools.partial(gemv, cfg=cfg, exact=exact, out_dtype=jnp.float32))(
                    *sets[0]))  # fmt: skip
                cell[f"rel_err_f32_out_exact{exact}"] = rel_err(outs[exact], ref)
            cell["tb_per_s"] = n * k * (1 + 1 / 32) / cell["exact1_us"] / 1e6
        reads = [(w,) for _, w in sets]
        row["fp8_read_us"] = loop_time(lambda w: jnp.max(w.data.view(jnp.uint8), axis=1), reads) * 1e6
        times = [row["bf16_dot_us"], row["library_us"], row["pallas_us"]] + [
            row[f"best {f}"]["exact1_us"] if f in best else float("nan") for f in ("row", "split")
        ]
        notes = "; ".join(
            f"{f} {c['label']}"
            + (f": partial-sum scaling {c['exact0_us']:.1f} us" if "exact0_us" in c else "")
            + f", {c['tb_per_s']:.2f} TB/s, float32-out error {c['rel_err_f32_out_exact1']:.1e}"
            for f, c in ((f, row[f"best {f}"]) for f in best)
        )
        print(
            f"{f'({n}, {k})':>14} "
            + " ".join(f"{t:9.1f}" for t in times)
            + " ".join(f"{times[0] / t:8.2f}x" for t in times[1:])
            + f" {row['fp8_read_us']:9.1f}  library float32-out error {row['rel_err_library_f32_out']:.1e}; {notes}",
            flush=True,
        )
        write_json("cuda_gemv_probe.json", results)


ROW_CONFIGS = {
    2: (Split(8, 1, 4, 2, 2), Split(8, 1, 8, 2, 2)),
    4: (Split(8, 1, 4, 2, 4),),
}
"""``--rows``: the multi-row split kernels at K = 4096 (256 threads, 2 CTAs an SM). Two rows also in units of 8 rows
(128 registers, no spills with ptxas 12.9): 128 bytes of weight loads in flight a thread, 64 KB an SM, twice the
library's two-row kernel's (units of 4 rows, 95 registers), as much as the one-row kernel's (1024 x 64 B). It ran slower
than the library's (eighteenth session, results/cuda_gemv_probe_ahead2_h200.*), as did units of 4 rows two units ahead
and the one-row kernel two units ahead (three register buffers; their builds were removed in the nineteenth session and
are in dae2a31's gemv.cu and cuda_gemv_probe.py)."""


def rows_sweep(results: dict, ms: tuple[int, ...]) -> None:
    """The multi-row split kernels at the K = 4096 shapes against bf16 ``jnp.dot`` and the shipped backend (its Pallas
    kernels at these row counts), each checked against emulation (float32 out)."""
    print(f"{'(N, K)':>14} {'M':>3} {'bf16':>8} {'shipped':>8} {'split':>8} {'shipped':>8} {'split':>8}  (us, ratios)")
    for n, k in GEMV_SHAPES:
        if k != 4096:
            continue
        for m in ms:
            sets = operands(n, k, m)
            ref = reference(*sets[0])
            baselines = {"bf16_dot_us": bf16_dot_us(sets)}  # once for the configurations of this shape and M
            with small_m_kernels("auto"):
                baselines["shipped_us"] = loop_time(lambda x, w: hopper.matmul(x, w, jnp.bfloat16), sets) * 1e6
            for cfg in ROW_CONFIGS[m]:
                out = np.asarray(jax.jit(functools.partial(gemv, cfg=cfg, out_dtype=jnp.float32))(*sets[0]))
                row = {"config": label_of(cfg), "rel_err_f32_out": rel_err(out, ref), **baselines}
                row["split_us"] = loop_time(functools.partial(gemv, cfg=cfg), sets) * 1e6
                results[f"rows ({n}, {k}) M={m} {row['config']}"] = row
                times = [row[key] for key in ("bf16_dot_us", "shipped_us", "split_us")]
                print(
                    f"{f'({n}, {k})':>14} {m:3d} " + " ".join(f"{t:8.1f}" for t in times)
                    + " ".join(f"{times[0] / t:8.2f}x" for t in times[1:])
                    + f"  error {row['rel_err_f32_out']:.1e}  {row['config']}",
                    flush=True,
                )  # fmt: skip
                write_json("cuda_gemv_probe.json", results)


def route_sweep(results: dict, ms: tuple[int, ...]) -> None:
    """The shipped backend (``auto``: the tensor-core GEMV kernel where ``cuda_gemv.config`` takes the shape) against
    its Pallas kernels alone (``pallas``) and bf16 ``jnp.dot`` at the K = 4096 shapes, checked against emulation
    (float32 out)."""
    print(f"{'(N, K)':>14} {'M':>3} {'bf16':>8} {'auto':>8} {'pallas':>8} {'auto':>8} {'pallas':>8}  (us, ratios)")
    for n, k in GEMV_SHAPES:
        if k != 4096:
            continue
        for m in ms:
            sets = operands(n, k, m)
            ref = reference(*sets[0])
            row = {"bf16_dot_us": bf16_dot_us(sets)}
            for choice in ("auto", "pallas"):
                with small_m_kernels(choice):
                    row[f"{choice}_kernels"] = ptx_launch.traced_launches(library, *sets[0])
                    out = np.asarray(jax.jit(library)(*sets[0]))
                    row[f"{choice}_rel_err_f32_out"] = rel_err(out, ref)
                    row[f"{choice}_us"] = loop_time(lambda x, w: library(x, w, jnp.bfloat16), sets) * 1e6
            results[f"route ({n}, {k}) M={m}"] = row
            times = [row[key] for key in ("bf16_dot_us", "auto_us", "pallas_us")]
            print(
                f"{f'({n}, {k})':>14} {m:3d} " + " ".join(f"{t:8.1f}" for t in times)
                + " ".join(f"{times[0] / t:8.2f}x" for t in times[1:])
                + f"  error {row['auto_rel_err_f32_out']:.1e} / {row['pallas_rel_err_f32_out']:.1e};"
                f" auto launches {row['auto_kernels']}",
                flush=True,
            )  # fmt: skip
            write_json("cuda_gemv_probe.json", results)


def mma_sweep(results: dict, ms: tuple[int, ...] = MMA_ROWS) -> None:
    """The tensor-core kernel at every shape and row count against bf16 ``jnp.dot`` and the shipped backend, each
    configuration checked against emulation (float32 out)."""
    labels = [c.label for c in MMA_CONFIGS]
    heads = " ".join(f"{h:>12}" for h in labels)
    print(f"{'(N, K)':>14} {'M':>3} {'bf16':>8} {'shipped':>8} {heads}  (us, ratios)")
    for n, k in GEMV_SHAPES:
        for m in ms:
            sets = operands(n, k, m)
            ref = reference(*sets[0])
            row = {"bf16_dot_us": bf16_dot_us(sets)}
            with small_m_kernels("auto"):
                row["shipped_us"] = loop_time(lambda x, w: hopper.matmul(x, w, jnp.bfloat16), sets) * 1e6
            cells = []
            for cfg, label in zip(MMA_CONFIGS, labels, strict=True):
                if not mma_fits(cfg, m, n, k):
                    cells.append(f"{'-':>12}")
                    continue
                try:
                    out = jax.jit(functools.partial(gemv_mma, cfg=cfg, out_dtype=jnp.float32))(*sets[0])
                    err = rel_err(np.asarray(out), ref)
                    t = loop_time(functools.partial(gemv_mma, cfg=cfg), sets, iters=20, repeats=3) * 1e6
                    row[label] = {"us": t, "rel_err_f32_out": err, "tb_per_s": n * k * (1 + 1 / 32) / t / 1e6}
                    cells.append(f"{t:6.1f} {row['bf16_dot_us'] / t:4.2f}x")
                except Exception as e:  # noqa: BLE001
                    row[label] = {"error": failure(e)}
                    cells.append(f"{'error':>12}")
                    print(f"  ({n}, {k}) M={m} {label}: {failure(e)}")
            results[f"mma ({n}, {k}) M={m}"] = row
            errs = ", ".join(f"{lab} {row[lab]['rel_err_f32_out']:.1e}" for lab in labels if "us" in row.get(lab, {}))
            print(
                f"{f'({n}, {k})':>14} {m:3d} {row['bf16_dot_us']:8.1f} {row['shipped_us']:8.1f} " + " ".join(cells)
                + f"  shipped {row['bf16_dot_us'] / row['shipped_us']:.2f}x; error {errs}",
                flush=True,
            )  # fmt: skip
            write_json("cuda_gemv_probe.json", results)


def activation_vectors() -> tuple[np.ndarray, list[np.ndarray]]:
    """A finite bf16 row of 1024 that exercises the quantization rule, and rows with a non-finite block."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(1024) * 2.0 ** rng.integers(-40, 40, 1024)).astype(np.float32)
    x[32:64] = 0.0  # amax 0: scale byte 0
    x[64:96] = rng.standard_normal(32) * 1e-39  # bf16 subnormals
    x[96:128] = rng.standard_normal(32) * 1e38  # near bf16's largest
    # amax 448 (e = 0): ties to even at several exponents, a tie at half the smallest E4M3 subnormal
    ties = [448.0, 1.0625, 1.1875, -2.125, 17.0, 19.0, -0.01953125, 0.0009765625, 0.005859375, 288.0]
    x[128:160] = 0.0
    x[128 : 128 + len(ties)] = ties
    boundary = 448.0 * 2.0**-13  # e = -13 exactly: XLA's log2 puts this amax one scale too high
    x[160:192] = np.clip(rng.standard_normal(32) * 0.01, -0.05, 0.05)
    x[160] = boundary
    x[192:224] = np.clip(rng.standard_normal(32) * 0.01, -0.05, 0.05)
    x[192] = boundary * (1 + 2.0**-7)  # just above it: e = -12
    x[224:256] = rng.standard_normal(32) * 1e-38  # e clamps at -127
    finite = x.astype(jnp.bfloat16)
    poisoned = []
    for bad in (np.inf, -np.inf, np.nan):
        y = finite.copy()
        y[300] = bad
        poisoned.append(y)
    return finite, poisoned


def second_of_two_rows(fn: Callable) -> Callable:
    """``(x [1, K], w) -> fn`` run on ``x`` as the second row under a zero row, its second output row."""
    return lambda x, w: fn(jnp.concatenate([jnp.zeros_like(x), x]), w)[1:]


def row_of_many(x: jax.Array, w: MXArray, m: int, variant: str = "") -> jax.Array:
    """``x [1, K]`` as row ``m - 3`` of ``m`` rows (the others zero), through the tensor-core kernel; that row out."""
    rows = jnp.zeros((m, x.shape[1]), x.dtype).at[m - 3].set(x[0])
    return gemv_mma(rows, w, Mma(4, 4, variant), out_dtype=jnp.float32)[m - 3 : m - 2]


def row_of_many_wide(fn: Callable, m: int) -> Callable:
    """``(x [1, K], w [N, K]) -> fn`` run on ``x`` as row ``m - 3`` of ``m`` (the others zero) and ``w`` tiled along N
    to at least ``cuda_gemv.MMA_MIN_N`` rows (where the library's tensor-core kernels take it): that row's first N
    outputs."""

    def run(x, w):
        n = w.shape[0]
        reps = -(-cuda_gemv.MMA_MIN_N // n)
        wide = MXArray(jnp.tile(w.data, (reps, 1)), jnp.tile(w.scale, (reps, 1)))
        return fn(jnp.zeros((m, x.shape[1]), x.dtype).at[m - 3].set(x[0]), wide)[m - 3 : m - 2, :n]

    return run


def asking_mma_smem(nbytes: int) -> contextlib.AbstractContextManager:
    """A patch under which the library's tensor-core GEMV launches ask for ``nbytes`` of dynamic shared memory, which
    the kernel does not use: the A/B of the L1 / shared-memory split (``--mma-smem``; other launches unchanged)."""
    launch = ptx_launch.launch

    def asking(*operands, name: str, smem: int = 0, **kwargs):
        return launch(*operands, name=name, smem=nbytes if name.startswith("mxfp8_gemv_mma_r") else smem, **kwargs)

    return mock.patch.object(ptx_launch, "launch", asking)


def library(x: jax.Array, w: MXArray, out_dtype=jnp.float32) -> jax.Array:
    """The ``hopper`` backend as shipped (1-8 raw bf16 rows: ``cuda_gemv``); trace under ``small_m_kernels``."""
    return hopper.matmul(x, w, out_dtype)


def edges(results: dict, labels: tuple[str, ...] = ("exact1", "exact0", "split_m2", "library", "library_m2")) -> None:
    """Weight scale-byte and NaN-byte edges against emulation; the in-kernel activation quantization exactly: for the
    probe's build (with and without the per-element weight scaling), the tensor-core kernel (one row of 8 or of 16)
    and the library path (one row, and the second of two); ``labels`` picks among them."""
    x, w = edge_operands()
    data = np.asarray(w.data).copy()
    data[4, 100] = np.float32("nan")  # an E4M3 NaN byte under a finite scale
    w = MXArray(jnp.asarray(data), w.scale)
    eye = identity_weight(1024)
    cfg = Config(4, 1, 2, 0, 0)
    kernels = {
        "exact1": functools.partial(gemv, cfg=cfg, exact=1, out_dtype=jnp.float32),
        "exact0": functools.partial(gemv, cfg=cfg, exact=0, out_dtype=jnp.float32),
        "split_m2": second_of_two_rows(functools.partial(gemv, cfg=Split(2, 1, 4, 1, 2), out_dtype=jnp.float32)),
        "mma_m8": functools.partial(row_of_many, m=8),
        "mma_m16": functools.partial(row_of_many, m=16),
        "mma_f8_m8": functools.partial(row_of_many, m=8, variant="_f8"),
        "library": library,
        "library_m2": second_of_two_rows(library),
        "library_m8": row_of_many_wide(library, 8),
    }
    kernels = {label: kernels[label] for label in labels}
    finite, poisoned = activation_vectors()
    for label, fn in kernels.items():
        with small_m_kernels("auto"):
            row = {"kernels traced": sorted(set(ptx_launch.traced_launches(fn, x[:1], w) + ptx_launch.traced_launches(
                fn, jnp.asarray(finite)[None], eye)))}  # fmt: skip
            differ, err = weight_edge_errors(fn, x, w)
            row["weight: nonfinite_differ (row, col, kernel, emulation)"] = differ
            row["weight: finite_rel_err"] = err
            mismatches = decoded_activation_mismatches(fn, jnp.asarray(finite)[None], eye)
            row["activation: identical"] = not mismatches
            row["activation: mismatches (k, kernel, expected)"] = mismatches[:20]
            for y, name in zip(poisoned, ("+inf", "-inf", "nan"), strict=True):
                out = np.asarray(jax.jit(fn)(jnp.asarray(y)[None], eye))
                row[f"activation: {name} in one block, outputs NaN (of 1024)"] = int(np.isnan(out).sum())
        results[f"edges {label}"] = row
        print(f"edges {label}: {row}", flush=True)
        write_json("cuda_gemv_probe.json", results)


def weight_edge_errors(fn: Callable, x: jax.Array, w: MXArray) -> tuple[list[list], float]:
    """Each row of ``x`` alone through ``fn`` against emulation: the outputs whose NaN or Inf differs, as (row, col,
    kernel, emulation), and the largest relative error over the rest."""
    differ, errs = [], []
    for i in range(x.shape[0]):
        ref = reference(x[i : i + 1], w)
        out = np.asarray(jax.jit(fn)(x[i : i + 1], w))
        bad = np.argwhere((np.isnan(out) != np.isnan(ref)) | (np.isinf(out) != np.isinf(ref)))
        differ += [[i, int(j), float(out[0, j]), float(ref[0, j])] for _, j in bad]
        fin = np.isfinite(ref) & np.isfinite(out)
        errs.append(rel_err(out[fin], ref[fin]))
    return differ, max(errs)


@jax.jit
def _decoded(x: jax.Array) -> jax.Array:
    return dequantize(quantize(x), jnp.float32)


def decoded_activation_mismatches(fn: Callable, xs: jax.Array, eye: MXArray) -> list[list]:
    """``fn(xs, eye)`` (an identity weight returns the activation the kernel multiplies) against
    ``dequantize(quantize(xs))``: every (k, kernel, expected) that differs in value (the sum's +0 terms may turn a -0
    into +0)."""
    want = np.asarray(_decoded(xs))
    got = np.asarray(jax.jit(fn)(xs, eye))
    return [[int(j), float(got[0, j]), float(want[0, j])] for j in np.flatnonzero(want != got)]


@contextlib.contextmanager
def small_m_kernels(choice: str):
    """``MXFP8_XLA_HOPPER_SMALL_M=choice`` (read when a call is traced) and fresh jit caches on the way in and out."""
    with mock.patch.dict(os.environ, {hopper.SMALL_M_KERNEL_ENV: choice}):
        jax.clear_caches()
        try:
            yield
        finally:
            jax.clear_caches()


@contextlib.contextmanager
def gemv_f32_out():
    """The GEMV kernels write float32 and XLA rounds to the requested dtype (a fusable convert after the custom
    call, where it otherwise feeds consumers such as a KV-cache update directly), with fresh jit caches."""
    matmul_rows = cuda_gemv.matmul_rows

    def f32_then_round(x, w, out_dtype):
        return matmul_rows(x, w, jnp.float32).astype(out_dtype)

    with mock.patch.object(cuda_gemv, "matmul_rows", f32_then_round):
        jax.clear_caches()
        try:
            yield
        finally:
            jax.clear_caches()


LLAMA_MODELS = {
    "bf16_nk": (False, "auto", contextlib.nullcontext),
    "mxfp8": (True, "auto", contextlib.nullcontext),
    "mxfp8_pallas": (True, "pallas", contextlib.nullcontext),
    "mxfp8_f32out": (True, "auto", gemv_f32_out),
}
"""``--models``: name -> (quantized, ``MXFP8_XLA_HOPPER_SMALL_M``, context the decode runs in)."""


def llama(results: dict, models: tuple = ("bf16_nk", "mxfp8", "mxfp8_pallas"), fuses: tuple = (True, False)) -> None:
    """Decode at batch 1, 4 Llama-3-8B blocks, fused projections, then not (``fuses``), for each of ``LLAMA_MODELS``
    named: bf16 ``[N, K]``, MXFP8 as shipped (one row: this kernel), MXFP8 on the Pallas kernels alone, and MXFP8 with
    the kernel's float32 output rounded by XLA (``gemv_f32_out``)."""
    from bench_llama import block_config, build_model, decode_step

    rows = {}
    for fuse in fuses:
        for name in models:
            quantized, choice, context = LLAMA_MODELS[name]
            with small_m_kernels(choice), context():
                cfg, params = build_model(block_config(4), quantized=quantized, bf16_layout="nk", fuse_projections=fuse)
                step = decode_step(cfg, params, 1)
            label = f"{name}{' fused' if fuse else ''}"
            rows[label] = {"ms_per_step": step * 1e3, "tokens_per_s": 1 / step}
            print(f"llama 4 blocks, batch 1, {label}: {step * 1e3:.3f} ms/step, {1 / step:,.0f} tokens/s", flush=True)
            results["llama batch 1"] = rows
            write_json("cuda_gemv_probe.json", results)
            del params


PTX = ""  # the compiled kernels, set once by __main__ (CPU tests only trace, and need no nvcc)
MMA_PTX = ""

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama", action="store_true", help="also the Llama decode at batch 1")
    parser.add_argument("--llama-only", action="store_true", help="only the Llama decode at batch 1")
    parser.add_argument("--models", default="bf16_nk,mxfp8,mxfp8_pallas", help="the Llama part's models")
    parser.add_argument("--fused-only", action="store_true", help="the Llama part with fused projections only")
    parser.add_argument("--library-only", action="store_true", help="the sweep without the probe's configurations")
    parser.add_argument("--rows", help="comma-separated row counts (2, 4): only the multi-row kernels, then the edges")
    parser.add_argument("--split-only", action="store_true", help="the sweep with the split configurations only")
    parser.add_argument("--mma", help="comma-separated row counts (1-16): only the tensor-core kernel, then its edges")
    parser.add_argument("--route", help="comma-separated row counts (3-8): the library's route, then its edges")
    parser.add_argument("--ptx", help="--route: the library's kernels from this build of gemv.cu (an A/B)")
    parser.add_argument("--min-n", type=int, help="--route: cuda_gemv.MMA_MIN_N for this run (default the library's)")
    parser.add_argument("--mma-smem", type=int, help="--route: shared memory the tensor-core launches ask for")
    args = parser.parse_args()
    if args.min_n is not None:
        cuda_gemv.MMA_MIN_N = args.min_n  # read by cuda_gemv.config at trace time
    if args.mma_smem is not None:
        asking_mma_smem(args.mma_smem).start()
    if args.ptx:
        cuda_gemv.PTX = Path(args.ptx)  # read once by cuda_gemv._ptx, at the first launch traced
    PTX = compile_ptx()
    MMA_PTX = compile_ptx(MMA_SOURCE, "cuda_gemv_mma")
    results = {"environment": environment() | ({"gemv_ptx": args.ptx} if args.ptx else {})}
    print(results["environment"])
    parts = ("llama",) if args.llama_only else ("sweep", "edges", "llama") if args.llama else ("sweep", "edges")
    parts = ("rows", "edges") if args.rows else ("mma", "mma edges") if args.mma else parts
    parts = ("route", "route edges") if args.route else parts
    for part in parts:
        try:
            if part == "sweep":
                split_only = tuple(c for c in CONFIGS if isinstance(c, Split))
                sweep(results, () if args.library_only else split_only if args.split_only else CONFIGS)
            elif part == "rows":
                rows_sweep(results, tuple(int(m) for m in args.rows.split(",")))
            elif part == "mma":
                mma_sweep(results, tuple(int(m) for m in args.mma.split(",")))
            elif part == "route":
                route_sweep(results, tuple(int(m) for m in args.route.split(",")))
            elif part == "route edges":
                edges(results, ("library_m8", "library"))
            elif part == "mma edges":
                edges(results, ("mma_m8", "mma_m16", "mma_f8_m8"))
            elif part == "edges":
                edges(results)
            else:
                llama(results, tuple(args.models.split(",")), (True,) if args.fused_only else (True, False))
        except Exception as e:  # noqa: BLE001
            results[part] = {"error": failure(e)}
            print(f"{part}: {failure(e)}")
        write_json("cuda_gemv_probe.json", results)
