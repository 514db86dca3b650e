"""The Mosaic GPU kernel at 128-256 rows with one change each to where its registers go: what wins back jax 0.12's loss.

On jax 0.12.0.1 the route's config ran 23-26% slower at 256 rows than on jax 0.11.2, and ptxas reported 152 bytes of
spills where 0.11.2 had none (docs/benchmark_log.md, "jax 0.12 on the device"). Each variant is the shipped kernel
(``hopper_mosaic._kernel``, the route's config, no K split) with one change:

- ``shipped``: as the library runs it;
- ``scales_now``: each step loads its own scale bytes at its start instead of carrying the next step's;
- ``block_tiles``: the weight tiled ``[8, 32]`` with a 32-byte swizzle in shared memory, each ``[64, 32]`` block
  loaded into registers just before its decode instead of the whole ``[64, tile_k]`` tile at once;
- ``wgmma_store``: the accumulator stored as ``out.T [N, M]`` in wgmma's own layout (no layout cast), XLA transposes;
- ``memory_registers_24``: the producer warpgroup at 24 registers a thread, the compute warpgroups at 240 (not 232);
- ``f32_out``: float32 output (what ``mosaic_config_probe.py`` timed);
- ``block_tiles_scales_now``: the two that took registers off on jax 0.12, together (added after the thirty-third
  session's runs, not yet timed).

Each runs after the activation's quantize+decode pass, is checked against emulation and timed (``loop_time``, weights
rotating through >= 150 MB) beside bf16 ``jnp.dot`` in the same process. Run it under ``MOSAIC_GPU_DUMP_PTXAS=1`` to
see ptxas's registers and spills for each compile (in the order printed).

    PYTHONPATH=. python3 benchmarks/mosaic_spill_probe.py [--rows 128,256] [--shapes 14336x4096,28672x4096]

Writes ``$OUT/mosaic_spill_probe.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import operands, reference, timed_check  # noqa: E402
from route_check import tolerance_for  # noqa: E402
from timing import environment, loop_time, write_json  # noqa: E402

from mxfp8_xla import numerics  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402
from mxfp8_xla.backends.hopper_mosaic import (  # noqa: E402
    BLOCK,
    ROWS,
    MosaicConfig,
    decode_with_factor,
    load_row_scales,
    padded_rows,
    store_to_gmem,
)
from mxfp8_xla.mxarray import MXArray  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Variant:
    """One change to the shipped kernel (the module docstring says what each does)."""

    name: str
    scales_ahead: bool = True
    block_tiles: bool = False
    wgmma_store: bool = False
    memory_registers: int = 40
    out_dtype: str = "bfloat16"


VARIANTS = (
    Variant("shipped"),
    Variant("scales_now", scales_ahead=False),
    Variant("block_tiles", block_tiles=True),
    Variant("wgmma_store", wgmma_store=True),
    Variant("memory_registers_24", memory_registers=24),
    Variant("f32_out", out_dtype="float32"),
    Variant("block_tiles_scales_now", block_tiles=True, scales_ahead=False),
)


def _kernel(w_gmem, s_gmem, x_gmem, o_gmem, *, m: int, cfg: MosaicConfig, v: Variant) -> None:
    i_n, wg = lax.axis_index("n"), lax.axis_index("wg")
    cta_rows = ROWS * cfg.num_wgs
    wg_rows = pl.ds(wg * ROWS, ROWS)
    my_rows = pl.ds(i_n * cta_rows + wg * ROWS, ROWS)
    steps, blocks = w_gmem.shape[1] // cfg.tile_k, cfg.tile_k // BLOCK

    def load_scales(t):
        return load_row_scales(s_gmem, my_rows, t * blocks, blocks)

    def step(idx, w_smem, x_smem, carry):
        acc_ref, carried = carry
        if v.scales_ahead:
            scale_bytes, carried = carried, load_scales(jnp.minimum(idx[0] + 1, steps - 1))
        else:
            scale_bytes = load_scales(idx[0])
        factors = tuple(map(numerics.scale_to_factor, scale_bytes))
        tile = None if v.block_tiles else w_smem[wg_rows]
        for j in range(blocks):
            cols = pl.ds(j * BLOCK, BLOCK)
            q = w_smem[wg_rows, cols] if v.block_tiles else tile[:, j * BLOCK : (j + 1) * BLOCK]
            plgpu.wgmma(acc_ref, decode_with_factor(q, factors[j]), x_smem.at[:, cols].T)
        plgpu.wgmma_wait(0)
        return acc_ref, carried

    def compute_context(run_pipeline):
        @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((ROWS, m), jnp.float32))
        def _(acc_ref):
            run_pipeline((acc_ref, load_scales(0) if v.scales_ahead else ()))
            out = acc_ref[...].astype(o_gmem.dtype)
            if v.wgmma_store:
                store_to_gmem(o_gmem.at[my_rows], out)
            else:
                out = plgpu.layout_cast(out, plgpu.Layout.WGMMA_TRANSPOSED)
                store_to_gmem(o_gmem.at[:, my_rows].transpose((1, 0)), out)

    w_tiling = (8, BLOCK) if v.block_tiles else (8, 128)
    pipeline = plgpu.emit_pipeline_warp_specialized(
        step,
        grid=(steps,),
        memory_registers=v.memory_registers,
        in_specs=[
            plgpu.BlockSpec(
                (cta_rows, cfg.tile_k),
                lambda t: (0, t),
                transforms=(plgpu.TilingTransform(w_tiling), plgpu.SwizzleTransform(w_tiling[1])),
            ),
            plgpu.BlockSpec(
                (m, cfg.tile_k),
                lambda t: (0, t),
                transforms=(plgpu.TilingTransform((8, BLOCK)), plgpu.SwizzleTransform(64)),
            ),
        ],
        wg_axis="wg",
        num_compute_wgs=cfg.num_wgs,
        max_concurrent_steps=cfg.stages,
        compute_context=compute_context,
    )
    pipeline(w_gmem.at[pl.ds(i_n * cta_rows, cta_rows)], x_gmem)


def matmul(x: jax.Array, w: MXArray, cfg: MosaicConfig, v: Variant) -> jax.Array:
    """``x [M, K] @ w.T`` (``x`` exact bf16) through variant ``v`` of the kernel with ``cfg`` (``split_k`` 1)."""
    m, n = x.shape[0], w.shape[0]
    if cfg.split_k != 1 or cfg.check(m, n, x.shape[1]):
        raise ValueError(f"the probe runs configs without a K split that fit [{m}, {x.shape[1]}] x [{n}, ...]: {cfg}")
    m_pad = padded_rows(m)
    x = jnp.pad(x, ((0, m_pad - m), (0, 0)))
    out = plgpu.kernel(
        functools.partial(_kernel, m=m_pad, cfg=cfg, v=v),
        out_type=jax.ShapeDtypeStruct((n, m_pad) if v.wgmma_store else (m_pad, n), jnp.dtype(v.out_dtype)),
        grid=(n // (ROWS * cfg.num_wgs),),
        grid_names=("n",),
        num_threads=cfg.num_wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )(w.data, w.scale, x.astype(jnp.bfloat16))
    return (out.T if v.wgmma_store else out)[:m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="128,256", help="comma-separated activation rows")
    ap.add_argument("--shapes", default="14336x4096,28672x4096", help="comma-separated NxK weight shapes")
    args = ap.parse_args()
    env = environment()
    print(env, flush=True)
    rows, failed = [], 0
    for n, k in (tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")):
        for m in (int(r) for r in args.rows.split(",")):
            cfg = hopper.mosaic_kernel_config(m, n, k)
            sets = operands(n, k, m)
            ref = reference(*sets[0])
            bf16 = loop_time(lambda x, wb: jnp.dot(x, wb.T), [(x, q.data.astype(jnp.bfloat16)) for x, q in sets])
            print(f"== N={n} K={k} M={m} {cfg}: bf16 jnp.dot {bf16 * 1e6:.1f} us", flush=True)
            for v in VARIANTS:
                row = dict(n=n, k=k, m=m, config=str(cfg), variant=v.name, bf16_us=bf16 * 1e6)
                fn = lambda x, q, cfg=cfg, v=v: matmul(hopper.decode_operand(x), q, cfg, v)  # noqa: E731
                row |= timed_check(fn, sets, ref, tolerance_for(v.out_dtype))
                if "error" in row:
                    print(f"  {v.name:20s} {row['error']}", flush=True)
                else:
                    failed += not row["ok"]
                    print(
                        f"  {v.name:20s} {row['us']:7.1f} us ({bf16 * 1e6 / row['us']:.2f}x bf16), "
                        f"error {row['rel_err']:.1e}{'' if row['ok'] else ' MISMATCH'}",
                        flush=True,
                    )
                rows.append(row)
            write_json("mosaic_spill_probe.json", dict(environment=env, rows=rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
