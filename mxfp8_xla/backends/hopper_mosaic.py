"""Hopper small-M MXFP8 GEMM as a warp-specialized Mosaic GPU kernel (Pallas ``plgpu``).

One producer warpgroup streams the fp8 weight, its E8M0 scale bytes and the activation
into shared memory with TMA; ``num_wgs`` compute warpgroups decode each ``[64, 32]``
weight block to bf16 in registers and hand it to ``wgmma`` as the register (A) operand.
The product is computed transposed, ``out.T [N, M] = W [N, K] @ x.T``, so the weight
fills wgmma's 64-row M dimension and the few activation rows (padded to a multiple of
8) its N dimension. The activation arrives as exact bf16 (``dequantize(quantize(x))``),
so the result is the emulation backend's function up to float32 summation order.

Nothing runs around the kernel but the activation pass: each compute warpgroup reads
its rows' scale bytes straight from the untransposed ``[N, K/32]`` array in global
memory (through TMA and shared memory the per-step ``tile_k / 32`` bytes per row are
below TMA's 16-byte minimum, and reading one column of a shared-memory scale tile did not
compile with jax 0.11.2). It loads them one step ahead and carries the bytes through the
pipeline; the step that uses them turns them into float32 factors, so the load has a
whole step to land (turning them into factors at once made every step wait for it; the
change took 4-16% off the time at M <= 16 on an H200, docs/benchmark_log.md). It writes the
output ``[M, N]`` in the output dtype from registers (float32 partial sums per K split,
added by XLA, when ``split_k > 1``). Where ptxas ignores the pipeline's ``setmaxnreg`` (jaxlib 0.12,
:func:`setmaxnreg_ignored`) the compute warpgroups keep 168 registers a thread, and from 224 rows the
backend has the kernel load its weight tile one block at a time (``MosaicConfig.block_loads``).

Requires jax's Mosaic GPU backend on an SM90 GPU. Measured against the Triton kernel by
benchmarks/mosaic_sweep.py; docs/backends.md says where each one runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import jax
import jax.experimental.pallas as pl
import jax.numpy as jnp
from jax import lax

from mxfp8_xla import numerics, varying_axes
from mxfp8_xla.layout import round_up
from mxfp8_xla.mxarray import MXArray

IMPORT_ERROR: str | None = None
"""Why Mosaic GPU does not import here (``None``: it does)."""
try:  # without Mosaic GPU the package still imports, and the hopper backend is unavailable (``select`` says why)
    import jax.experimental.pallas.mosaic_gpu as plgpu
except ImportError as e:
    plgpu = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"


BLOCK = numerics.BLOCK_SIZE
ROWS = 64  # weight rows per compute warpgroup: wgmma's M
MAX_M = 256  # activation rows: wgmma's N (at most 256), padded to a multiple of 8
SMEM_BUDGET = 220 * 1024
"""Shared memory bytes the pipeline's stages may take: SM90's 227 KB per block, less room for
the pipeline's barriers and Pallas's scratch."""


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    """``num_wgs`` compute warpgroups of 64 weight rows each; ``tile_k`` of K per pipeline step;
    ``stages`` steps in flight; ``split_k`` CTAs along K, their partial sums added by XLA.

    ``block_loads``: the weight tile sits in shared memory tiled ``[8, 32]`` with a 32-byte swizzle, and each
    ``[64, 32]`` block is loaded into registers just before its decode, instead of the whole ``[64, tile_k]`` tile
    at once (128-byte swizzle): fewer registers live, for compiles where ptxas ignores ``setmaxnreg``
    (:func:`setmaxnreg_ignored`)."""

    num_wgs: int = 2
    tile_k: int = 128
    stages: int = 4
    split_k: int = 1
    block_loads: bool = False

    def stage_bytes(self, m: int) -> int:
        """Shared memory of one pipeline stage: the fp8 weight tile and ``m`` (padded) bf16 activation rows."""
        return ROWS * self.num_wgs * self.tile_k + padded_rows(m) * self.tile_k * 2

    def check(self, m: int, n: int, k: int) -> str | None:
        """Why this config cannot run ``[m, k] x [n, k]``, or None if it can."""
        if m > MAX_M:
            return f"M={m} rows exceed {MAX_M}"
        if self.stages * self.stage_bytes(m) > SMEM_BUDGET:
            return (
                f"{self.stages} stages of {self.stage_bytes(m)} bytes (weight [{ROWS * self.num_wgs}, {self.tile_k}] "
                f"fp8 + activation [{padded_rows(m)}, {self.tile_k}] bf16) exceed the {SMEM_BUDGET}-byte shared "
                "memory budget"
            )
        if n % (ROWS * self.num_wgs):
            return f"N={n} is not a multiple of {ROWS * self.num_wgs} (64 rows per compute warpgroup)"
        if self.tile_k % 128:
            return f"tile_k={self.tile_k} must be a multiple of 128 (the weight's swizzle width)"
        if k % (self.tile_k * self.split_k):
            return f"K={k} is not a multiple of tile_k*split_k={self.tile_k * self.split_k}"
        return None


def decode_block(q: jax.Array, scale: jax.Array) -> jax.Array:
    """E4M3 ``q [R, 32]`` times ``2**(scale - 127)`` per row (``scale [R]`` uint8) -> exact bf16.

    One float32 factor per row (byte 0 is the subnormal ``2**-127``, exact on the GPU;
    byte 255 is NaN). The product has E4M3's 4 significant bits, so bf16 holds it exactly
    unless it falls below bf16's normal range (scale bytes < 10), where it can round once.
    """
    return decode_with_factor(q, numerics.scale_to_factor(scale))


def decode_with_factor(q: jax.Array, factor: jax.Array) -> jax.Array:
    """:func:`decode_block` for a row's float32 factor already built (``factor [R]``)."""
    return (q.astype(jnp.float32) * lax.broadcast_in_dim(factor, q.shape, [0])).astype(jnp.bfloat16)


@functools.cache
def _load_wants_index() -> bool:
    """Whether this jax's ``plgpu.load`` needs the index beside the ref (0.10) or deprecates it (0.11)."""
    idx = inspect.signature(plgpu.load).parameters.get("idx")
    return idx is not None and idx.default is inspect.Parameter.empty


def load_whole(ref: Any, layout: plgpu.Layout) -> jax.Array:
    """``plgpu.load`` of a whole, already indexed ``ref`` into registers in ``layout`` (a plain, unvectorized load).

    jax 0.10 wants the index ``()`` beside the ref; jax 0.11 deprecates passing one.
    """
    if _load_wants_index():
        return plgpu.load(ref, (), layout=layout, optimized=False)
    return plgpu.load(ref, layout=layout, optimized=False)


def load_row_scales(s_gmem: Any, rows: pl.Slice, first: jax.Array, blocks: int) -> tuple[jax.Array, ...]:
    """Scale columns ``first .. first + blocks - 1`` of ``rows`` of the untransposed ``[N, K/32]`` bytes,
    one uint8 ``[64]`` row vector each."""
    return tuple(load_whole(s_gmem.at[rows, first + j], row_layout()) for j in range(blocks))


def row_layout() -> plgpu.Layout:
    """The register layout of one value per wgmma accumulator row."""
    return plgpu.Layout.WGMMA.reduce(1)


@functools.cache
def setmaxnreg_ignored() -> bool:
    """Whether this jaxlib's Mosaic GPU compiles kernels for linking, where ptxas ignores ``setmaxnreg`` (jaxlib 0.12).

    The warp-specialized pipeline hands its compute warpgroups 232 registers a thread through ``setmaxnreg``; ptxas
    drops that in code compiled for linking ("C7504 ... 'setmaxnreg' ignored to maintain compatibility across
    compilation units"), so they keep the 168 a 384-thread CTA launches with. jaxlib 0.12.0.1 does so (ptxas's report
    on an H200, ``benchmarks/mosaic_spill_probe.py``); 0.11.2 did not.
    """
    import jaxlib.version

    return tuple(int(p) for p in jaxlib.version.__version__.split(".")[:2]) >= (0, 12)


def store_to_gmem(ref: Any, value: jax.Array) -> None:
    """``ref[...] = value`` for a global-memory ``ref``, straight from registers, as jax 0.10.2 and 0.11.2 store it.

    jax 0.12's Mosaic GPU refuses such a store unless each warp's transfer covers whole 32-byte sectors, which a
    16-bit output in the transposed wgmma layout does not (a float32 one does); ``plgpu.store(..., optimized=False)``
    asks for the plain store. jax 0.10.2 and 0.11.2 have no ``plgpu.store`` and store plainly.
    """
    if hasattr(plgpu, "store"):
        plgpu.store(ref, value, optimized=False)
    else:
        ref[...] = value


def _kernel(w_gmem, s_gmem, x_gmem, o_gmem, *, m: int, cfg: MosaicConfig, k_split: int) -> None:
    i_n, i_s, wg = lax.axis_index("n"), lax.axis_index("s"), lax.axis_index("wg")
    cta_rows = ROWS * cfg.num_wgs
    wg_rows = pl.ds(wg * ROWS, ROWS)
    my_rows = pl.ds(i_n * cta_rows + wg * ROWS, ROWS)
    steps, blocks = k_split // cfg.tile_k, cfg.tile_k // BLOCK

    def load_scales(t):
        """Step ``t``'s scales for this warpgroup's rows (:func:`load_row_scales`)."""
        return load_row_scales(s_gmem, my_rows, i_s * (k_split // BLOCK) + t * blocks, blocks)

    def step(idx, w_smem, x_smem, carry):
        acc_ref, scale_bytes = carry
        upcoming = load_scales(jnp.minimum(idx[0] + 1, steps - 1))  # in flight while this step computes
        factors = tuple(map(numerics.scale_to_factor, scale_bytes))
        tile = None if cfg.block_loads else w_smem[wg_rows]  # [64, tile_k] fp8 in registers
        for j in range(blocks):
            cols = pl.ds(j * BLOCK, BLOCK)
            q = w_smem[wg_rows, cols] if cfg.block_loads else tile[:, j * BLOCK : (j + 1) * BLOCK]
            plgpu.wgmma(acc_ref, decode_with_factor(q, factors[j]), x_smem.at[:, cols].T)
        plgpu.wgmma_wait(0)
        return acc_ref, upcoming

    def compute_context(run_pipeline):
        @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((ROWS, m), jnp.float32))
        def _(acc_ref):
            run_pipeline((acc_ref, load_scales(0)))
            out = plgpu.layout_cast(acc_ref[...].astype(o_gmem.dtype), plgpu.Layout.WGMMA_TRANSPOSED)
            store_to_gmem(o_gmem.at[i_s, :, my_rows].transpose((1, 0)), out)  # out [M, N]: no transpose after

    w_tile_cols = BLOCK if cfg.block_loads else 128  # shared-memory tiles one block wide, or one 128-byte swizzle wide
    pipeline = plgpu.emit_pipeline_warp_specialized(
        step,
        grid=(k_split // cfg.tile_k,),
        memory_registers=40,
        in_specs=[
            plgpu.BlockSpec(
                (cta_rows, cfg.tile_k),
                lambda t: (0, t),
                transforms=(plgpu.TilingTransform((8, w_tile_cols)), plgpu.SwizzleTransform(w_tile_cols)),
            ),
            plgpu.BlockSpec(
                (m, cfg.tile_k),
                lambda t: (0, t),
                transforms=(plgpu.TilingTransform((8, BLOCK)), plgpu.SwizzleTransform(64)),  # one block per tile
            ),
        ],
        wg_axis="wg",
        num_compute_wgs=cfg.num_wgs,
        max_concurrent_steps=cfg.stages,
        compute_context=compute_context,
    )
    ks = pl.ds(i_s * k_split, k_split)
    pipeline(w_gmem.at[pl.ds(i_n * cta_rows, cta_rows), ks], x_gmem.at[:, ks])


def matmul_2d(x: jax.Array, w: MXArray, out_dtype: jnp.dtype, config: MosaicConfig | None = None) -> jax.Array:
    """``x [M, K] @ w.T`` for an exact bf16 ``x`` (a decoded MXFP8 activation) and an MXArray ``w [N, K]``."""
    m, k = x.shape
    n = w.shape[0]
    cfg = config or MosaicConfig()
    reason = cfg.check(m, n, k)
    if reason:
        raise ValueError(f"hopper backend (Mosaic GPU): cannot run x [{m}, {k}] @ w [{n}, {k}].T: {reason}")
    m_pad = padded_rows(m)
    if m != m_pad:
        x = jnp.pad(x, ((0, m_pad - m), (0, 0)))
    k_split = k // cfg.split_k
    out = plgpu.kernel(
        functools.partial(_kernel, m=m_pad, cfg=cfg, k_split=k_split),
        out_type=jax.ShapeDtypeStruct((cfg.split_k, m_pad, n), out_dtype if cfg.split_k == 1 else jnp.float32),
        grid=(n // (ROWS * cfg.num_wgs), cfg.split_k),
        grid_names=("n", "s"),
        num_threads=cfg.num_wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )(w.data, w.scale, x.astype(jnp.bfloat16))
    out = varying_axes.cast_to(out, varying_axes.of(w, x))  # Mosaic GPU's kernels give their outputs no such type
    out = out[0] if cfg.split_k == 1 else out.sum(axis=0).astype(out_dtype)
    return out[:m]


def stages_for_rows(m: int, num_wgs: int, tile_k: int, most: int = 4) -> int:
    """The most pipeline stages, up to ``most``, whose tiles for ``m`` activation rows fit :data:`SMEM_BUDGET`."""
    fits = SMEM_BUDGET // MosaicConfig(num_wgs=num_wgs, tile_k=tile_k).stage_bytes(m)
    return max(1, min(most, fits))


def split_for_ctas(n: int, k: int, num_wgs: int, tile_k: int, min_ctas: int) -> int:
    """The K split, doubled from 1 while K divides, until at least ``min_ctas`` CTAs stream the weight."""
    split = 1
    while (n // (ROWS * num_wgs)) * split < min_ctas and k % (tile_k * split * 2) == 0:
        split *= 2
    return split


def padded_rows(m: int) -> int:
    """Activation rows the kernel multiplies: ``m`` rounded up to wgmma's multiple of 8."""
    return round_up(m, 8)
