"""Hopper (SM90) backend: MXFP8 ``x @ w.T`` without a bf16 weight in HBM where it matters.

Hopper has no MX-scaled tensor-core instructions. One or two raw rows (bfloat16, float16 or float32; decode at batch 1
or 2) take one CUDA kernel launch that quantizes the rows itself and streams the weight on the CUDA
cores; three to eight rows (K <= 4096) one launch of a tensor-core GEMV kernel built the same way (:mod:`.cuda_gemv`,
where its ``config`` takes the shape). For ``M <= 64`` rows (decode,
memory-bound) a Pallas/Triton GEMM reads the fp8 weight and its uint8 scales once
from HBM, decodes ``[bn, bk]`` tiles to exact bf16 in registers (``fp8 * 2**(s-127)``
fits bf16 exactly), and runs one bf16 MMA with float32 accumulation per step; the
activation arrives quantized by a one-pass Pallas kernel. (The kernel also keeps
the original per-32-block variant, ``tile_dequant=False``, and in-kernel activation
quantization, for the tile sweeps in benchmarks/hopper_sweep.py.) Where it measured
faster (``mosaic_config``: 17 to 256 rows, and up to 16 rows at K >= 8192), a
warp-specialized Mosaic GPU kernel (``hopper_mosaic``) replaces it. For more rows than
these serve (compute-bound), and at 17-64 rows where the Triton GEMM's K split would write large partial sums
(``takes_triton``), one-pass Pallas kernels decode both operands to exact bf16 and cuBLAS multiplies them. Either
way the result is the emulation backend's function up to float32 summation order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mxfp8_xla import norm, numerics, varying_axes
from mxfp8_xla.backends import cuda_gemv, hopper_mosaic, pallas_quantize
from mxfp8_xla.backends.pallas_quantize import pltriton
from mxfp8_xla.backends.select import require_backend
from mxfp8_xla.mxarray import MXArray, quantize

BLOCK = numerics.BLOCK_SIZE


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile sizes: ``bm x bn`` outputs per program, ``bk`` of K per loop step, ``split_k`` programs along K."""

    bm: int = 16
    bn: int = 64
    bk: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    swap_ab: bool = False  # compute out.T = w @ x.T: the weight fills the MMA's M dimension
    tile_dequant: bool = False  # dequantize whole [bn, bk] tiles to bf16, one MMA per bk step

    def check(self, m: int, n: int, k: int) -> str | None:
        """Why this config cannot run ``[m, k] x [n, k]``, or None if it can (any N: a last, partial N tile is
        masked)."""
        if k % (self.bk * self.split_k):
            return f"K={k} is not a multiple of bk*split_k={self.bk * self.split_k}"
        return None


_INTERPRET = [False]


@contextlib.contextmanager
def interpret_mode() -> Iterator[None]:
    """Trace this backend's Pallas kernels in interpret mode (runs on CPU: numerics checks, debugging).

    Mosaic GPU has no interpret mode, so shapes routed to ``hopper_mosaic`` take the Triton
    (M <= 64) or cuBLAS path instead: the same function up to float32 summation order.
    """
    _INTERPRET.append(True)
    try:
        yield
    finally:
        _INTERPRET.pop()


SMALL_M_MAX = 64
"""Up to this many rows the Triton GEMM runs where Mosaic does not (:func:`takes_triton`); above, operands are decoded
to bf16 for cuBLAS."""


SMALL_M_KERNEL_ENV = "MXFP8_XLA_HOPPER_SMALL_M"
"""``auto`` (default): the kernel measured faster for the shape (one to eight raw rows: :mod:`.cuda_gemv`);
``pallas``: as ``auto`` but never the GEMV kernel (the Pallas kernels alone, for comparisons);
``triton``: never Mosaic nor the GEMV kernel; ``mosaic``: Mosaic wherever it can run, never the GEMV kernel."""


def small_m_choice() -> str:
    """``MXFP8_XLA_HOPPER_SMALL_M``, checked."""
    choice = os.environ.get(SMALL_M_KERNEL_ENV, "auto").strip().lower()
    if choice not in ("auto", "pallas", "triton", "mosaic"):
        raise ValueError(f"{SMALL_M_KERNEL_ENV}={choice!r}: expected 'auto', 'pallas', 'triton' or 'mosaic'")
    return choice


MOSAIC_MIN_K = 8192
"""``auto`` runs the Mosaic GPU kernel for up to 16 rows only from this K up.

At (N, K) = (4096, 14336) it took 39.1 / 38.0 us against the Triton kernel's 46.6 / 45.1 us
for M = 1 / 16; at K = 4096 the Triton kernel won at 6 of 8 points (H100,
benchmarks/mosaic_sweep.py, results/mosaic_sweep_gmem_scales_h100.log).
"""

MOSAIC_MIN_CTAS = 100
"""K is split until at least this many CTAs stream the weight (132 SMs on an H100/H200).

The best split at every (N, K, M) of ``mosaic_sweep.py --mid-m`` (now ``--rows 64,256``) on an H200
(results/mosaic_sweep_mid_m_h200.log): at (14336, 4096) 112 unsplit CTAs beat 224 split ones.
"""


PARTIAL_SUMS_MAX_WEIGHTS = 4
"""An odd split of K (the Triton GEMM's or the Mosaic kernel's) keeps its float32 partial sums (``split_k * M * N * 4``
bytes, M padded as the kernel pads it) within this many times the weight's bytes (``N * K``).

On an H200 (``ragged_k_probe.py``, (3584, 2368), 37 tiles of 64) splitting K 37 ways ran 2.1x / 1.7x / 2.3x / 1.9x
faster than K unsplit at 17 / 32 / 48 / 64 rows, with partial sums 1.1x / 2.0x / 3.0x / 4.0x the weight's bytes.
"""


BLOCK_LOADS_MIN_ROWS = 224
"""From this many rows (padded to wgmma's multiple of 8) the Mosaic GPU kernel loads its weight tile one 32-column block
at a time where ptxas ignores ``setmaxnreg`` (jax 0.12; ``MosaicConfig.block_loads``). There its compute warpgroups keep
168 registers a thread, and at 256 rows the whole-tile load spilled 152 bytes and serialized the wgmmas. On an H200 with
jax 0.12.0.1 (``mosaic_config_probe.py --first 2``, thirty-fourth session; us, block loads / whole tiles) at (14336,
4096): 65.4 / 72.4 at 224 rows, 73.1 / 74.1 at 240, 73.8 / 87.2 at 256; at (28672, 4096): 121.9 / 131.4, 133.1 /
142.8, 140.2 / 167.7. At 144-208 rows whole tiles ran as fast or faster (208 rows: 61.7 / 56.8 and 115.9 / 104.8); at
128 rows block loads won 2-5% (50.9 / 53.4, 95.2 / 97.0), a point this rule leaves out. On jax 0.11.2, which honors
``setmaxnreg``, block loads lost 2-9% at 64-256 rows, and whole tiles stay."""


def mosaic_kernel_config(m: int, n: int, k: int) -> hopper_mosaic.MosaicConfig:
    """The Mosaic GPU kernel's split (>= :data:`MOSAIC_MIN_CTAS` CTAs) and stages (what fits) for ``[m, k] x [n, k]``,
    whether or not :func:`mosaic_config` routes the shape to it; it may still fail ``check``.

    K is split in two while that divides it, then, where the tiles left are odd, by :func:`_odd_split`, leaving each
    CTA at least its pipeline's stages of tiles. On an H200 (``ragged_k_probe.py``, thirtieth session) at
    (5120, 3456), 40 CTAs and 27 tiles of 128, splitting K 3 ways ran 17.0 / 19.9 / 23.6 / 32.2 us at 32 / 64 / 128 /
    256 rows against 27.6 / 29.4 / 35.2 / 50.6 us unsplit (9 ways, 3 tiles a CTA: 22.3 / 25.9 us at 32 / 64 rows); at
    (3584, 2432), 28 CTAs and 19 tiles, one tile a CTA (19 ways) ran 25.9 / 38.0 us at 64 / 128 rows against 22.0 /
    26.6 us unsplit, and 20.3 us either way at 32 rows (twenty-ninth session)."""
    cfg = hopper_mosaic.MosaicConfig()
    block_loads = hopper_mosaic.padded_rows(m) >= BLOCK_LOADS_MIN_ROWS and hopper_mosaic.setmaxnreg_ignored()
    stages = hopper_mosaic.stages_for_rows(m, cfg.num_wgs, cfg.tile_k, most=cfg.stages)
    split = hopper_mosaic.split_for_ctas(n, k, cfg.num_wgs, cfg.tile_k, min_ctas=MOSAIC_MIN_CTAS)
    ctas, tiles = n // (hopper_mosaic.ROWS * cfg.num_wgs), k // (cfg.tile_k * split)
    if 0 < ctas * split < MOSAIC_MIN_CTAS and k % cfg.tile_k == 0 and tiles % 2:
        sums_most = PARTIAL_SUMS_MAX_WEIGHTS * k // (4 * hopper_mosaic.padded_rows(m) * split)
        split *= _odd_split(tiles, -(-MOSAIC_MIN_CTAS // (ctas * split)), min(sums_most, tiles // stages))
    return dataclasses.replace(cfg, split_k=split, stages=stages, block_loads=block_loads)


def mosaic_config(m: int, n: int, k: int) -> hopper_mosaic.MosaicConfig | None:
    """The Mosaic GPU kernel's config for ``m`` rows, or None where another kernel runs.

    Follows ``MXFP8_XLA_HOPPER_SMALL_M``: ``auto`` (and ``pallas``) runs Mosaic for 17 to 256 rows, and for
    up to 16 rows from K = :data:`MOSAIC_MIN_K` up (where each measured faster on an H200 /
    H100); ``mosaic`` wherever it can run; ``triton`` never.
    """
    choice = small_m_choice()
    cfg = mosaic_kernel_config(m, n, k)
    if choice == "triton" or cfg.check(m, n, k) is not None:
        return None
    return cfg if choice == "mosaic" or m > 16 or k >= MOSAIC_MIN_K else None


SMALL_M_MIN_PROGRAMS = 256
"""Up to 16 rows the Triton GEMM splits K until at least this many programs stream the weight.

On an H200 (``hopper_sweep.py --small``, results/hopper_small_retune_h200.log, end to end) bn=64
with this split was the fastest of 24 tilings at all four K = 4096 shapes at M = 16, and beat the
earlier ~100-program rule at M = 1 too: e.g. (6144, 4096) 19.8 against 22.0 us (M = 16) and
17.7 against 20.7 us (M = 1); (28672, 4096) 58.0 against 62.5 us.
"""


CUBLAS_PARTIAL_SUMS_WEIGHTS = 2
"""From 17 rows, where the Triton GEMM's K split would write float32 partial sums above this many times the weight's
bytes, the route decodes both operands for cuBLAS instead (:func:`takes_triton`).

On an H200 (``ragged_k_probe.py --only route,cublas``; twenty-ninth and thirtieth sessions) at (3584, 2368), split 37
ways, the split ran 14.4 / 17.2 us against cuBLAS's 20.7 / 21.3 us at 17 / 32 rows (partial sums 1.1x / 2.0x the
weight's bytes) and 22.2-22.7 / 27.1-27.2 us against 19.6-20.2 / 20.3 us at 48 / 64 rows (3.0x / 4.0x). At
(5120, 1728), split 3 ways (0.4x), the Triton GEMM beat cuBLAS at 48 and 64 rows (18.7 / 18.9 against 20.8 / 20.5 us).
"""


def takes_triton(m: int, n: int, k: int) -> bool:
    """Whether ``m`` rows times a weight ``[n, k]`` take the Triton GEMM where the Mosaic kernel does not: up to 16
    rows always, 17 to :data:`SMALL_M_MAX` while :func:`default_config`'s float32 partial sums stay within
    :data:`CUBLAS_PARTIAL_SUMS_WEIGHTS` times the weight's bytes; else the weight is decoded for cuBLAS."""
    if m > SMALL_M_MAX:
        return False
    return m <= 16 or default_config(m, n, k).split_k * m * 4 <= CUBLAS_PARTIAL_SUMS_WEIGHTS * k


def default_config(m: int, n: int, k: int) -> KernelConfig:
    """The Triton GEMM's tiles for ``m <= 64`` rows (benchmarks/hopper_sweep.py): bk = 128 (64 or 32 where K
    needs a narrower tile), whole-tile dequantization.

    Up to 16 rows: bn=64, K split until :data:`SMALL_M_MIN_PROGRAMS` programs (measured on an H200).
    17 to 64 rows (measured on an H100): bn=128 while that still gives ~100 programs along N,
    else bn=64 and K split until ~100 programs. K is split in two up to 8 ways, then, where the tiles left are odd,
    by :func:`_odd_split`.
    """
    if m <= 16:
        bm, bn, min_programs = 16, 64, SMALL_M_MIN_PROGRAMS
    else:
        bm = 32 if m <= 32 else 64
        bn = 128 if n % 128 == 0 and n // 128 >= 96 else 64
        min_programs = 100
    bk = _k_tile(k, 128)
    tiles, n_tiles = k // bk, pl.cdiv(n, bn)
    split_k = 1
    while n_tiles * split_k < min_programs and split_k < 8 and tiles % (split_k * 2) == 0:
        split_k *= 2
    if n_tiles * split_k < min_programs and (tiles // split_k) % 2:
        most = PARTIAL_SUMS_MAX_WEIGHTS * k // (4 * max(m, 1) * split_k)
        split_k *= _odd_split(tiles // split_k, -(-min_programs // (n_tiles * split_k)), most)
    return KernelConfig(bm=bm, bn=bn, bk=bk, split_k=split_k, num_warps=4, num_stages=4, tile_dequant=True)


def _odd_split(tiles: int, wanted: int, most: int) -> int:
    """A further split of an odd number of K ``tiles``: the smallest divisor reaching ``wanted``, else the largest
    divisor up to ``most`` (1: none).

    Where K / bk is odd (K = 2368 = 37 x 64, Qwen2.5-7B's MLP width over 8 shards; K = 2432 = 19 x 128) no split in
    two applies, and N / 64 programs stream the weight: 56 at N = 3584. On an H200 (``ragged_k_probe.py``) splitting
    K into its 37 tiles ran 2.8x / 2.6x faster there at 1 / 16 rows (K = 2368), into its 19 tiles 2.0x at one row
    (K = 2432), the fastest of every (bk, split_k) timed. ``most`` bounds the float32 partial sums
    (:data:`PARTIAL_SUMS_MAX_WEIGHTS`).
    """
    divisors = [d for d in range(2, tiles + 1) if tiles % d == 0 and d <= most]
    return next((d for d in divisors if d >= wanted), max(divisors, default=1))


def _load_weight(w_ref, ws_ref, cols, col_ok: jax.Array | None, ks, kbs) -> tuple[jax.Array, jax.Array]:
    """The weight's fp8 tile ``[bn, ...]`` and its scale bytes; with ``col_ok`` (a last, partial N tile, the data
    passed as uint8 bits: masked loads need an integer type) the rows past N read as zeros."""
    if col_ok is None:
        return w_ref[cols, ks], ws_ref[cols, kbs]
    data = pltriton.load(w_ref.at[cols, ks], mask=col_ok[:, None], other=0)
    scale_ok = col_ok[:, None] if isinstance(kbs, pl.Slice) else col_ok  # a tile's scale columns, or one column
    scale = pltriton.load(ws_ref.at[cols, kbs], mask=scale_ok, other=0)
    return jax.lax.bitcast_convert_type(data, jnp.float8_e4m3fn), scale


def _kernel(*refs, m: int, n: int, cfg: KernelConfig, k_split: int, x_is_quantized: bool) -> None:
    """One ``[bm, bn]`` output tile over a ``k_split`` slice of K.

    Per 32-wide block of K: ``dot(x_fp8 -> f16, w_fp8 -> f16)`` accumulates exact
    products in float32, then the partial sum is scaled by ``2**(ex + ew)`` (the
    activation's and the weight's block scales, outer product) and added to the
    accumulator. E4M3 converts to f16 exactly, so no element is ever rounded.
    """
    if x_is_quantized:
        xq_ref, xs_ref, w_ref, ws_ref, o_ref = refs
    else:
        x_ref, w_ref, ws_ref, o_ref = refs
    i_m, i_n, i_s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    m0, n0 = i_m * cfg.bm, i_n * cfg.bn
    row_ok = (m0 + jnp.arange(cfg.bm)) < m
    col_ok = (n0 + jnp.arange(cfg.bn)) < n if n % cfg.bn else None
    rows = pl.ds(m0, cfg.bm)
    cols = pl.ds(n0, cfg.bn)

    def step(t, acc):
        for c in range(cfg.bk // BLOCK):
            kb = (i_s * k_split + t * cfg.bk) // BLOCK + c  # scale column
            ks = pl.ds(kb * BLOCK, BLOCK)
            if x_is_quantized:  # fp8 data arrives as uint8 bits (masked loads need an integer type)
                bits = pltriton.load(xq_ref.at[rows, ks], mask=row_ok[:, None], other=0)
                xq = jax.lax.bitcast_convert_type(bits, jnp.float8_e4m3fn)
                xs = pltriton.load(xs_ref.at[rows, kb], mask=row_ok, other=0)
            else:
                x = pltriton.load(x_ref.at[rows, ks], mask=row_ok[:, None], other=0)
                xq, xs = numerics.quantize_blocks(x.astype(jnp.float32))
            wq, ws = _load_weight(w_ref, ws_ref, cols, col_ok, ks, kb)
            a, b = xq.astype(jnp.float16), wq.astype(jnp.float16)
            fx, fw = numerics.scale_to_factor(xs), numerics.scale_to_factor(ws)
            # One factor after the other: their product overflows float32 from 2**128 on (scale bytes summing
            # to 382 or more), where emulation's decoded operands and their products stay finite.
            if cfg.swap_ab:
                partial = jax.lax.dot_general(b, a, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
                acc += partial * fw[:, None] * fx[None, :]
            else:
                partial = jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
                acc += partial * fx[:, None] * fw[None, :]
        return acc

    if cfg.tile_dequant:
        step = functools.partial(
            _tile_step,
            refs=refs,
            ids=(i_m, i_n, i_s),
            m=m,
            col_ok=col_ok,
            cfg=cfg,
            k_split=k_split,
            x_is_quantized=x_is_quantized,
        )
    acc_shape = (cfg.bn, cfg.bm) if cfg.swap_ab else (cfg.bm, cfg.bn)
    acc = jax.lax.fori_loop(0, k_split // cfg.bk, step, jnp.zeros(acc_shape, jnp.float32))
    if cfg.swap_ab:
        acc = acc.T
    ok = row_ok[:, None] if col_ok is None else row_ok[:, None] & col_ok[None, :]
    if cfg.split_k > 1:  # partial sums [split_k, M, N], reduced by the caller
        pltriton.store(o_ref.at[pl.ds(i_s, 1), rows, cols], acc[None], mask=ok[None])
    else:
        pltriton.store(o_ref.at[rows, cols], acc.astype(o_ref.dtype), mask=ok)


def _decode_tile(data: jax.Array, scale: jax.Array) -> jax.Array:
    """``[R, bk]`` fp8 and ``[R, bk // 32]`` scale bytes to exact bf16, one multiply per element.

    Unlike ``pallas_quantize.decode_tile`` the two scale factors are folded into one
    (byte 0 then is the float32 subnormal ``2**-127``, exact on the GPU): the second
    multiply cost this ALU-bound kernel 1.25x -> 1.05x of bf16 at M=1, N=14336, K=4096
    (H100, bench_gemm.py).
    """
    r, bk = data.shape
    blocks = data.astype(jnp.float32).reshape(r, bk // BLOCK, BLOCK)
    return (blocks * numerics.scale_to_factor(scale)[:, :, None]).reshape(r, bk).astype(jnp.bfloat16)


def _tile_step(
    t, acc, *, refs, ids, m: int, col_ok: jax.Array | None, cfg: KernelConfig, k_split: int, x_is_quantized: bool
):
    """One bk step: both operands dequantized to exact bf16 tiles, then a single MMA."""
    i_m, i_n, i_s = ids
    rows, cols = pl.ds(i_m * cfg.bm, cfg.bm), pl.ds(i_n * cfg.bn, cfg.bn)
    row_ok = (i_m * cfg.bm + jnp.arange(cfg.bm)) < m
    k0 = i_s * k_split + t * cfg.bk
    ks, kbs = pl.ds(k0, cfg.bk), pl.ds(k0 // BLOCK, cfg.bk // BLOCK)
    if x_is_quantized:
        xq_ref, xs_ref, w_ref, ws_ref, _ = refs
        bits = pltriton.load(xq_ref.at[rows, ks], mask=row_ok[:, None], other=0)
        xs = pltriton.load(xs_ref.at[rows, kbs], mask=row_ok[:, None], other=0)
        x = _decode_tile(jax.lax.bitcast_convert_type(bits, jnp.float8_e4m3fn), xs)
    else:
        x_ref, w_ref, ws_ref, _ = refs
        xf = pltriton.load(x_ref.at[rows, ks], mask=row_ok[:, None], other=0).astype(jnp.float32)
        xq, xs = numerics.quantize_blocks(xf.reshape(cfg.bm * cfg.bk // BLOCK, BLOCK))
        x = _decode_tile(xq.reshape(cfg.bm, cfg.bk), xs.reshape(cfg.bm, cfg.bk // BLOCK))
    w = _decode_tile(*_load_weight(w_ref, ws_ref, cols, col_ok, ks, kbs))
    dims = (((1,), (1,)), ((), ()))
    if cfg.swap_ab:
        return acc + jax.lax.dot_general(w, x, dims, preferred_element_type=jnp.float32)
    return acc + jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)


def matmul_2d(
    x: jax.Array | MXArray,
    w: MXArray,
    out_dtype: jnp.dtype,
    config: KernelConfig | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """``x [M, K] @ w.T`` with ``w`` an MXArray ``[N, K]``; ``x`` raw (quantized in-kernel) or MXArray.

    ``interpret=None`` follows :func:`interpret_mode`.
    """
    m, k = x.shape
    n = w.shape[0]
    cfg = config or default_config(m, n, k)
    reason = cfg.check(m, n, k)
    if reason:
        raise ValueError(f"hopper backend: cannot run x [{m}, {k}] @ w [{n}, {k}].T: {reason}")
    x_is_quantized = isinstance(x, MXArray)
    operands = (jax.lax.bitcast_convert_type(x.data, jnp.uint8), x.scale) if x_is_quantized else (x,)
    # a last, partial N tile loads the weight masked, so as uint8 bits (masked loads need an integer type)
    w_data = jax.lax.bitcast_convert_type(w.data, jnp.uint8) if n % cfg.bn else w.data
    k_split = k // cfg.split_k
    grid = (pl.cdiv(m, cfg.bm), pl.cdiv(n, cfg.bn), cfg.split_k)
    acc_dtype = jnp.float32 if cfg.split_k > 1 else out_dtype
    out_shape = (cfg.split_k, m, n) if cfg.split_k > 1 else (m, n)
    kernel = functools.partial(_kernel, m=m, n=n, cfg=cfg, k_split=k_split, x_is_quantized=x_is_quantized)
    out = pl.pallas_call(
        kernel,
        out_shape=varying_axes.struct(out_shape, acc_dtype, x, w),
        grid=grid,
        compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=_INTERPRET[-1] if interpret is None else interpret,
        name="mxfp8_hopper_gemm",
    )(*operands, w_data, w.scale)
    if cfg.split_k > 1:
        out = out.sum(axis=0)
    return out.astype(out_dtype)


def quantize_activations(x: jax.Array) -> MXArray:
    """MXFP8-quantize ``x [M, K]`` with the one-pass Pallas kernel (bit-identical to ``quantize``).

    ``[16, 256]`` tiles, 4 warps: on an H200 1.15-1.21x faster than ``[32, 256]`` on jax 0.11.2 and 1.20-1.24x on
    0.12 at 4096 x 4096 and 8192 x 14336 (benchmarks/quantize_tile_probe.py, thirty-sixth session)."""
    return pallas_quantize.quantize_2d(x, bm=16, bk=_k_tile(x.shape[1], 256), tile=True, interpret=_INTERPRET[-1])


def quantize_rows(x: jax.Array) -> MXArray:
    """``quantize(x)`` for ``x [..., K]`` with :func:`quantize_activations` over the rows flattened (bit-identical)."""
    *lead, k = x.shape
    m = math.prod(lead)
    if m == 0:  # no rows: nothing to launch
        return quantize(x)
    return jax.tree.map(lambda a: a.reshape(*lead, -1), quantize_activations(x.reshape(m, k)))


def quantize_kernel(kernel: jax.Array) -> MXArray:
    """``quantize(kernel, axis=0)`` for a train-mode kernel ``[K, N]`` with the one-pass transposing Pallas kernel
    (bit-identical): an MXArray ``[N, K]``."""
    return pallas_quantize.quantize_transposed_2d(kernel, interpret=_INTERPRET[-1])


def decode_operand(x: jax.Array | MXArray, rows: int | None = None) -> jax.Array:
    """Exact bf16 operand: an MXArray decoded, or a raw ``x`` quantized and decoded, in one pass.

    ``rows`` pads the result with zero rows (in the same pass for a raw ``x``).
    """
    if isinstance(x, MXArray):
        out = pallas_quantize.decode_2d(x, bk=_k_tile(x.shape[1], 512), interpret=_INTERPRET[-1])
        return out if rows is None else jnp.pad(out, ((0, rows - out.shape[0]), (0, 0)))
    return pallas_quantize.fake_quantize_2d(x, bk=_k_tile(x.shape[1], 256), rows=rows, interpret=_INTERPRET[-1])


def _k_tile(k: int, widest: int) -> int:
    """The widest K tile up to ``widest`` (a power of two) that divides ``k`` (a multiple of 32: at worst 32)."""
    bk = widest
    while k % bk:
        bk //= 2
    return bk


def matmul(x: jax.Array | MXArray, w: MXArray, out_dtype: jnp.dtype, *, name: str | None = None) -> jax.Array:
    """Backend entry: ``x [..., K]`` (raw or MXArray) times ``w [N, K]``; leading dims flattened.

    A raw ``x`` is quantized by this backend's own kernels (bit-identical to ``quantize``).
    One to eight raw rows (bfloat16, float16 or float32) go to :mod:`.cuda_gemv` where it takes the weight's shape.
    Where :func:`mosaic_config` picks it (up to 256 rows), the Mosaic
    GPU kernel; else up to ``M <= 64`` rows the Triton GEMM. More rows: the GEMM is
    compute-bound; both operands are decoded exactly to bf16 by one-pass Pallas
    kernels (a raw activation quantized and decoded in the same pass) and cuBLAS
    multiplies them with float32 accumulation, writing ``out_dtype`` directly. This
    measured faster than the Pallas GEMM for large M on an H100 (docs/backends.md).
    """
    require_backend("hopper", n=w.shape[0], k=x.shape[-1], out_dtype=out_dtype, name=name)
    return _product(x, w, out_dtype)


def _takes_gemv(x: jax.Array | MXArray, w: MXArray) -> bool:
    """Whether :func:`_product` sends ``x`` to the GEMV kernels (never in the CPU interpreter, which runs no CUDA)."""
    return not _INTERPRET[-1] and small_m_choice() == "auto" and cuda_gemv.serves(x, w)


def _product(x: jax.Array | MXArray, w: MXArray, out_dtype: jnp.dtype) -> jax.Array:
    """:func:`matmul` after its checks: the GEMV kernels where they take ``x``, else :func:`_rows`."""
    if _takes_gemv(x, w):
        return _gemv(x, w, jnp.dtype(out_dtype))
    return _rows(x, w, out_dtype)


def _gemv(x: jax.Array, w: MXArray, out_dtype: jnp.dtype) -> jax.Array:
    """:func:`cuda_gemv.matmul_rows`; under ``vmap`` the mapped rows become more rows of one product (a GEMV kernel
    where one takes them all, else :func:`_rows`)."""

    @jax.custom_batching.custom_vmap
    def gemv(x, data, scale):
        return cuda_gemv.matmul_rows(x, MXArray(data, scale), out_dtype)

    @gemv.def_vmap
    def _(axis_size, in_batched, x, data, scale):
        del axis_size
        x_mapped, *w_mapped = in_batched
        if not any(w_mapped):  # x [B, ..., K]: B more rows of one product
            return _product(x, MXArray(data, scale), out_dtype), True
        axes = (0 if x_mapped else None, *(0 if b else None for b in w_mapped))
        return jax.vmap(lambda x, d, s: _rows(x, MXArray(d, s), out_dtype), in_axes=axes)(x, data, scale), True

    return gemv(x, w.data, w.scale)


def fuses_add_norm(x: jax.Array, delta: jax.Array, norm_weight: jax.Array, w: MXArray) -> bool:
    """Whether :func:`add_norm_gemv` runs an add-and-norm kernel for these operands (one bf16 or float32 row)."""
    return not _INTERPRET[-1] and small_m_choice() == "auto" and cuda_gemv.serves_add_norm(x, delta, norm_weight, w)


def add_norm_gemv(
    x: jax.Array, delta: jax.Array, norm_weight: jax.Array, eps: float, w: MXArray, out_dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array]:
    """:func:`cuda_gemv.add_norm_rows` (where :func:`fuses_add_norm`); under ``vmap`` the sum and the norm in
    ``jnp`` (:mod:`mxfp8_xla.norm`), then :func:`_rows`."""

    @jax.custom_batching.custom_vmap
    def fused(x, delta, norm_weight, data, scale):
        return cuda_gemv.add_norm_rows(x, delta, norm_weight, eps, MXArray(data, scale), out_dtype)

    @fused.def_vmap
    def _(axis_size, in_batched, *operands):
        del axis_size

        def unfused(x, delta, norm_weight, data, scale):
            h = norm.add(x, delta)
            return _rows(norm.rms_norm(h, norm_weight, eps), MXArray(data, scale), out_dtype), h

        axes = tuple(0 if b else None for b in in_batched)
        return jax.vmap(unfused, in_axes=axes)(*operands), (True, True)

    return fused(x, delta, norm_weight, w.data, w.scale)


def _rows(x: jax.Array | MXArray, w: MXArray, out_dtype: jnp.dtype) -> jax.Array:
    """Every path but the GEMV kernel (the rows of ``x`` flattened into M)."""
    *lead, k = x.shape
    m = math.prod(lead)
    if m == 0:  # no rows: nothing to launch (and no -1 to infer in the reshape below)
        return jnp.zeros((*lead, w.shape[0]), out_dtype)
    x2 = jax.tree.map(lambda a: a.reshape(m, -1), x)  # [M, K] (and its scales [M, K/32])
    mosaic = None if _INTERPRET[-1] else mosaic_config(m, w.shape[0], k)
    if mosaic is not None:
        x_exact = decode_operand(x2, rows=hopper_mosaic.padded_rows(m))
        out = hopper_mosaic.matmul_2d(x_exact, w, out_dtype, mosaic)[:m]
    elif takes_triton(m, w.shape[0], k):
        out = matmul_2d(x2 if isinstance(x2, MXArray) else quantize_activations(x2), w, out_dtype)
    else:  # cuBLAS accumulates bf16 products in float32 and rounds once into out_dtype
        dims = (((1,), (1,)), ((), ()))
        out = jax.lax.dot_general(decode_operand(x2), decode_operand(w), dims, preferred_element_type=out_dtype)
    return out.reshape(*lead, w.shape[0])
