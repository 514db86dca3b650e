"""Probe: Hopper's fp8 wgmma on both MXFP8 operands, each 32-block's partial sum scaled in float32.

The shipped Mosaic GPU kernel (``hopper_mosaic``) decodes each fp8 weight element to bf16 in
registers: per element a shared-memory load, an fp8 -> f16 -> f32 conversion, a float32
multiply and a pack to bf16, about 6.3 instructions per element and thread in its step loop
(``mosaic_sass.py``). Does that issue work cap it at M <= 16?

Here nothing is decoded. The weight ``[64, 32]`` block and the quantized activation's
``[M, 32]`` block go to ``wgmma`` as E4M3 straight from shared memory (K = 32 is one fp8
wgmma, one MX block), each block into its own float32 accumulator; after one wait per step
each partial sum is multiplied by ``2**(ew - 127) * 2**(ex - 127)`` (the weight row's and the
activation column's block scales) and added up in registers.

On an H200 (results/mosaic_fp8_probe_h200.*) it was no faster than the shipped kernel, and
4.7e-5 to 6.2e-5 from emulation: the E4M3 products are exact, but fp8 wgmma adds them with
fewer bits than float32. Not shipped.

Times kernel alone (activation pre-quantized) and end to end (raw bf16 activation ->
``hopper.quantize_activations`` -> kernel -> split-K sum) against bf16 ``jnp.dot`` and the
shipped backend in the same run, M = 1 and 16, the five Llama-3-8B shapes; checks every
result against the emulation backend and an edge-case weight (scale bytes 0, 1, 254, 255).

Run on the device: ``PYTHONPATH=. python3 benchmarks/mosaic_fp8_probe.py``; JSON to
$OUT/mosaic_fp8_probe.json.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import SHAPES, edge_operands, operands, rel_err  # noqa: E402
from timing import environment, failure, loop_time, write_json  # noqa: E402

from mxfp8_xla import MXArray, quantize  # noqa: E402
from mxfp8_xla.backends import emulation, hopper  # noqa: E402
from mxfp8_xla.backends.hopper_mosaic import (  # noqa: E402
    BLOCK,
    ROWS,
    load_row_scales,
    load_whole,
    padded_rows,
    split_for_ctas,
)
from mxfp8_xla.numerics import scale_to_factor  # noqa: E402

_COL_LAYOUT = plgpu.Layout.WGMMA.reduce(0)  # one value per accumulator column (activation row)


@dataclasses.dataclass(frozen=True)
class Fp8Mma:
    tile_k: int = 128
    stages: int = 4
    wgs: int = 2
    min_ctas: int = 100


def load_col_scales(s_t_gmem, first, blocks: int) -> tuple:
    """Scale rows ``first .. first + blocks - 1`` of the transposed activation scales ``[K/32, M]``, one ``[M]`` each
    (a strided column of ``[M, K/32]`` cannot be loaded in the accumulator's column layout)."""
    return tuple(load_whole(s_t_gmem.at[first + j], _COL_LAYOUT) for j in range(blocks))


def run(xq: MXArray, w: MXArray, v: Fp8Mma) -> jax.Array:
    """Float32 partial sums ``[split, M, N]`` of ``xq [M, K] @ w.T``, ``M`` a multiple of 8."""
    m, k = xq.shape
    n = w.shape[0]
    cta_rows = ROWS * v.wgs
    split = split_for_ctas(n, k, v.wgs, v.tile_k, min_ctas=v.min_ctas)
    k_split = k // split
    steps, blocks = k_split // v.tile_k, v.tile_k // BLOCK
    transforms = (plgpu.TilingTransform((8, BLOCK)), plgpu.SwizzleTransform(BLOCK))  # one 32-byte block per tile

    def kernel(w_gmem, ws_gmem, x_gmem, xs_gmem, o_gmem):
        i_n, i_s, wg = lax.axis_index("n"), lax.axis_index("s"), lax.axis_index("wg")
        wg_rows = pl.ds(wg * ROWS, ROWS)
        my_rows = pl.ds(i_n * cta_rows + wg * ROWS, ROWS)

        def load_scales(t):
            first = i_s * (k_split // BLOCK) + t * blocks
            return load_row_scales(ws_gmem, my_rows, first, blocks), load_col_scales(xs_gmem, first, blocks)

        def step(idx, w_smem, x_smem, carry):
            acc, (w_bytes, x_bytes) = carry
            upcoming = load_scales(jnp.minimum(idx[0] + 1, steps - 1))

            def mma(*acc_refs):
                for j, acc_ref in enumerate(acc_refs):
                    cols = pl.ds(j * BLOCK, BLOCK)
                    plgpu.wgmma(acc_ref, w_smem.at[wg_rows, cols], x_smem.at[:, cols].T)
                plgpu.wgmma_wait(0)
                return tuple(acc_ref[...] for acc_ref in acc_refs)

            partials = pl.run_scoped(mma, *(plgpu.ACC((ROWS, m), jnp.float32) for _ in range(blocks)))
            for j in range(blocks):
                fw = lax.broadcast_in_dim(scale_to_factor(w_bytes[j]), (ROWS, m), [0])
                fx = lax.broadcast_in_dim(scale_to_factor(x_bytes[j]), (ROWS, m), [1])
                acc = acc + partials[j] * (fw * fx)
            return acc, upcoming

        def compute_context(run_pipeline):
            zeros = plgpu.layout_cast(jnp.zeros((ROWS, m), jnp.float32), plgpu.Layout.WGMMA)
            acc, _ = run_pipeline((zeros, load_scales(0)))
            out = plgpu.layout_cast(acc, plgpu.Layout.WGMMA_TRANSPOSED)
            o_gmem.at[i_s, :, my_rows].transpose((1, 0))[...] = out

        pipeline = plgpu.emit_pipeline_warp_specialized(
            step,
            grid=(steps,),
            memory_registers=40,
            in_specs=[
                plgpu.BlockSpec((cta_rows, v.tile_k), lambda t: (0, t), transforms=transforms),
                plgpu.BlockSpec((m, v.tile_k), lambda t: (0, t), transforms=transforms),
            ],
            wg_axis="wg",
            num_compute_wgs=v.wgs,
            max_concurrent_steps=v.stages,
            compute_context=compute_context,
        )
        ks = pl.ds(i_s * k_split, k_split)
        pipeline(w_gmem.at[pl.ds(i_n * cta_rows, cta_rows), ks], x_gmem.at[:, ks])

    return plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((split, m, n), jnp.float32),
        grid=(n // cta_rows, split),
        grid_names=("n", "s"),
        num_threads=v.wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )(w.data, w.scale, xq.data, xq.scale.T)


def matmul(x: jax.Array, w: MXArray, v: Fp8Mma, out_dtype=jnp.bfloat16) -> jax.Array:
    """End to end: raw ``x [M, K]`` quantized by the backend's Pallas kernel, rows padded to 8, the kernel, the sum."""
    m = x.shape[0]
    xq = hopper.quantize_activations(x)
    pad = padded_rows(m) - m
    if pad:
        xq = MXArray(jnp.pad(xq.data, ((0, pad), (0, 0))), jnp.pad(xq.scale, ((0, pad), (0, 0))))
    return run(xq, w, v).sum(0)[:m].astype(out_dtype)


VARIANTS = [Fp8Mma(), Fp8Mma(tile_k=256, stages=4), Fp8Mma(stages=6), Fp8Mma(min_ctas=200)]


def edge_case_check(v: Fp8Mma) -> dict:
    """Scale bytes 0, 1, 254 and 255 (NaN) in the weight: NaN/inf positions and finite values against emulation."""
    x, q = edge_operands()
    ref = np.asarray(emulation.matmul(quantize(x), q, jnp.float32))
    out = np.asarray(matmul(x, q, v, jnp.float32))
    finite = np.isfinite(ref) & np.isfinite(out)
    return dict(
        nan_positions_match=bool(np.array_equal(np.isnan(out), np.isnan(ref))),
        inf_positions_match=bool(np.array_equal(np.isinf(out), np.isinf(ref))),
        max_rel_err_finite=float(np.max(np.abs(out[finite] - ref[finite]) / (np.abs(ref[finite]) + 1e-30))),
    )


def main() -> None:
    env = environment()
    print(env, flush=True)
    rows, edges = [], []
    for v in VARIANTS[:1]:
        try:
            edges.append(dict(dataclasses.asdict(v), **edge_case_check(v)))
        except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
            edges.append(dict(dataclasses.asdict(v), error=failure(e)))
        print(f"edge cases: {edges[-1]}", flush=True)
    for n, k in SHAPES:
        for m in (16, 1):
            sets = operands(n, k, m)
            t_bf16 = loop_time(lambda x, wb: jnp.dot(x, wb.T), [(x, q.data.astype(jnp.bfloat16)) for x, q in sets])
            ref = emulation.matmul(quantize(sets[0][0]), sets[0][1], jnp.float32)
            shipped = lambda x, q: hopper.matmul(x, q, jnp.bfloat16)  # noqa: E731
            t_shipped = loop_time(shipped, sets)
            print(
                f"== N={n} K={k} M={m}: bf16 jnp.dot {t_bf16 * 1e6:.1f} us; shipped hopper {t_shipped * 1e6:.1f} us "
                f"({t_bf16 / t_shipped:.2f}x)",
                flush=True,
            )
            base = dict(n=n, k=k, m=m, bf16_us=t_bf16 * 1e6, shipped_us=t_shipped * 1e6)
            xq_sets = [(quantize(jnp.pad(x, ((0, padded_rows(m) - m), (0, 0)))), q) for x, q in sets]
            for v in VARIANTS:
                label = dict(base, **dataclasses.asdict(v))
                try:
                    e2e = functools.partial(matmul, v=v)
                    err = rel_err(jax.jit(functools.partial(e2e, out_dtype=jnp.float32))(*sets[0]), ref)
                    t_e2e = loop_time(e2e, sets)
                    t_kernel = loop_time(functools.partial(run, v=v), xq_sets)
                except Exception as e:  # noqa: BLE001
                    print(f"  {v}: FAILED {failure(e)}", flush=True)
                    rows.append(dict(label, error=failure(e)))
                    continue
                print(
                    f"  {v}: kernel {t_kernel * 1e6:.1f} us, end to end {t_e2e * 1e6:.1f} us "
                    f"({t_bf16 / t_e2e:.2f}x bf16, {t_shipped / t_e2e:.2f}x shipped), rel err {err:.1e}",
                    flush=True,
                )
                rows.append(dict(label, kernel_us=t_kernel * 1e6, e2e_us=t_e2e * 1e6, rel_err=err))
            write_json("mosaic_fp8_probe.json", dict(environment=env, edge_cases=edges, rows=rows))


if __name__ == "__main__":
    main()
