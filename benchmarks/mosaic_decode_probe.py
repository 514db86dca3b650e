"""Probe: a warp-specialized Mosaic GPU (Pallas ``plgpu``) MXFP8 weight-only GEMM for small M on Hopper.

The Triton kernels of the ``hopper`` backend stream the fp8 weight at 1.6-1.75 TB/s
(docs/benchmark_log.md, "Where the small-M time goes"). This probe writes the design
those kernels cannot express: a TMA producer warpgroup feeds compute warpgroups that
decode E4M3 weight tiles in registers, scale each 32-wide block by its E8M0 factor,
and hand the bf16 tile to ``wgmma`` as the register (A) operand. The GEMM is computed
transposed, ``out.T [N, M] = W [N, K] @ x.T``, so the weight fills wgmma's 64-row M
dimension and the few activation rows its N dimension (8..256).

Prototype simplifications: the weight's block factors arrive prepared as bf16
``[K/32, N]`` (``2**(s-127)``, exact for every byte but 255), and the activation as
exact bf16 (``dequantize(quantize(x))``). Every timed configuration is checked
against a float32 HIGHEST-precision reference.

Run on the device: ``PYTHONPATH=. python3 benchmarks/mosaic_decode_probe.py``.
"""

from __future__ import annotations

import functools
import itertools
import sys

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from timing import device_time, environment, failure, write_json  # noqa: E402

ROWS = 64  # weight rows per compute warpgroup (wgmma's M)


def run_and_store(run_pipeline, o_smem, o_gmem) -> None:
    """Run the pipeline into a fresh float32 accumulator shaped like ``o_smem``, then copy it to ``o_gmem``."""

    @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC(o_smem.shape, jnp.float32))
    def _(acc_ref):
        run_pipeline(acc_ref)
        o_smem[...] = acc_ref[...]
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_gmem)
        plgpu.wait_smem_to_gmem(0)


def weight_factors(scale: jax.Array) -> jax.Array:
    """E8M0 bytes ``[N, K/32]`` -> bf16 ``2**(s-127)`` as ``[K/32, N]`` (byte 0: the subnormal 2**-127)."""
    bits = jnp.where(scale == 0, 0x40, scale.astype(jnp.uint16) << 7).astype(jnp.uint16)
    return lax.bitcast_convert_type(bits, jnp.bfloat16).T


def decode_block(q, f, decode):
    """``q [64, 32]`` E4M3 and the row factors ``f [64]`` -> the wgmma operand.

    ``f32``: convert to float32, multiply by the bf16 factor, round to bf16 (exact).
    ``bits``: convert to f16 (exact, one instruction per pair), then build the bf16 bits
    with integer ops, folding the scale into the exponent: ``f`` is int16 ``(s - 15) << 7``
    (probe-only: no NaN or out-of-range handling).
    ``f16_noscale``: convert to f16 and ignore the scales (wrong result; the ceiling).
    """
    if decode == "f32":
        v = q.astype(jnp.float32) * lax.broadcast_in_dim(f.astype(jnp.float32), q.shape, [0])
        return v.astype(jnp.bfloat16)
    h = q.astype(jnp.float16)
    if decode == "f16_noscale":
        return h
    u = lax.bitcast_convert_type(h, jnp.int16)
    mag = u & 0x7FFF
    bits = (lax.shift_right_logical(mag, jnp.int16(3)) + lax.broadcast_in_dim(f, q.shape, [0])) | (u & -0x8000)
    bits = jnp.where(mag == 0, u, bits)
    return lax.bitcast_convert_type(bits, jnp.bfloat16)


def mx_wo_gemm(w, sf, x, *, num_wgs=2, tile_k=128, stages=4, split_k=1, decode="f32", w_swizzle=32):
    """Partial sums ``[split_k, N, M]`` f32 of ``(w * sf) @ x.T``; ``x [M, K]`` with ``M % 8 == 0``."""
    n, k = w.shape
    m = x.shape[0]
    cta_rows = ROWS * num_wgs
    assert n % cta_rows == 0 and k % (tile_k * split_k) == 0 and m % 8 == 0, (n, k, m)
    k_split = k // split_k
    w_tf = (plgpu.TilingTransform((8, w_swizzle)), plgpu.SwizzleTransform(w_swizzle))
    x_tf = (plgpu.TilingTransform((8, 32)), plgpu.SwizzleTransform(64))  # one 32-wide block per tile

    def kernel(w_gmem, sf_gmem, x_gmem, o_gmem, o_smem):
        i_n, i_s, wg = lax.axis_index("n"), lax.axis_index("s"), lax.axis_index("wg")
        wg_rows = pl.ds(wg * ROWS, ROWS)

        def body(_, w_smem, sf_smem, x_smem, acc_ref):
            whole = w_smem[wg_rows] if w_swizzle > 32 else None  # one load, sliced in registers
            for c in range(tile_k // 32):
                q = w_smem[wg_rows, pl.ds(c * 32, 32)] if whole is None else whole[:, c * 32 : (c + 1) * 32]
                wc = decode_block(q, sf_smem[c, wg_rows], decode)
                plgpu.wgmma(acc_ref, wc, x_smem.at[:, pl.ds(c * 32, 32)].T)
            plgpu.wgmma_wait(0)
            return acc_ref

        def compute_context(eval_pipeline):
            run_and_store(eval_pipeline, o_smem.at[wg], o_gmem.at[i_s, pl.ds(i_n * cta_rows + wg * ROWS, ROWS)])

        pipe = plgpu.emit_pipeline_warp_specialized(
            body,
            grid=(k_split // tile_k,),
            memory_registers=40,
            in_specs=[
                plgpu.BlockSpec((cta_rows, tile_k), lambda t: (0, t), transforms=w_tf),
                plgpu.BlockSpec((tile_k // 32, cta_rows), lambda t: (t, 0)),
                plgpu.BlockSpec((m, tile_k), lambda t: (0, t), transforms=x_tf),
            ],
            wg_axis="wg",
            num_compute_wgs=num_wgs,
            max_concurrent_steps=stages,
            compute_context=compute_context,
        )
        pipe(
            w_gmem.at[pl.ds(i_n * cta_rows, cta_rows), pl.ds(i_s * k_split, k_split)],
            sf_gmem.at[pl.ds(i_s * (k_split // 32), k_split // 32), pl.ds(i_n * cta_rows, cta_rows)],
            x_gmem.at[:, pl.ds(i_s * k_split, k_split)],
        )

    f = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((split_k, n, m), jnp.float32),
        grid=(n // cta_rows, split_k),
        grid_names=("n", "s"),
        num_threads=num_wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
        scratch_types=dict(o_smem=plgpu.SMEM((num_wgs, ROWS, m), jnp.float32)),
    )
    return f(w, sf, x)


def operands(n, k, m, copies, seed=0):
    """``copies`` independent (w fp8 [N,K], scale bytes [N,K/32], x bf16 [M,K]) sets."""
    sets = []
    for i in range(copies):
        kw, ks, kx = jax.random.split(jax.random.key(seed + i), 3)
        w = (jax.random.normal(kw, (n, k), jnp.float32) * 64).astype(jnp.float8_e4m3fn)
        s = jax.random.randint(ks, (n, k // 32), 112, 124).astype(jnp.uint8)
        x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)
        sets.append((w, s, x))
    return sets


def kernel_operands(w, s, x, decode):
    """What ``mx_wo_gemm`` reads for ``decode``: the block factors' form and the activation's dtype."""
    if decode == "bits":
        return w, ((s.astype(jnp.int16) - 15) << 7).T, x
    return w, weight_factors(s), x.astype(jnp.float16 if decode == "f16_noscale" else jnp.bfloat16)


def reference(w, s, x):
    wf = w.astype(jnp.float32) * jnp.repeat(weight_factors(s).T.astype(jnp.float32), 32, axis=1)
    return jnp.dot(x.astype(jnp.float32), wf.T, precision=lax.Precision.HIGHEST)


KERNEL_CONFIGS = {  # (num_wgs, tile_k, stages, split_k)
    (14336, 4096): [(2, 128, 4, 1), (2, 256, 4, 1), (1, 256, 4, 1), (2, 128, 6, 1)],
    (4096, 14336): [(2, 128, 4, 4), (1, 256, 4, 2), (2, 256, 4, 4), (2, 128, 4, 2), (1, 256, 4, 4)],
}


def main():
    from mxfp8_xla import MXArray
    from mxfp8_xla.backends import hopper

    rows = []
    env = environment()
    print(env, flush=True)
    m, copies = 16, 4
    for (n, k), configs in KERNEL_CONFIGS.items():
        sets = operands(n, k, m, copies)
        t_bf16 = device_time(lambda wb, x: jnp.dot(x, wb.T), [(w.astype(jnp.bfloat16), x) for w, _, x in sets])
        ref = reference(*sets[0])
        print(f"== N={n} K={k} M={m}: bf16 jnp.dot {t_bf16 * 1e6:.1f} us", flush=True)
        rows.append(dict(n=n, k=k, m=m, variant="bf16_jnp_dot", us=t_bf16 * 1e6))
        best = {}
        for decode in ("f32", "bits", "f16_noscale"):
            prepared = [kernel_operands(*st, decode) for st in sets]
            for (num_wgs, tile_k, stages, split_k), w_swizzle in itertools.product(configs, (32, 128)):
                cfg = dict(num_wgs=num_wgs, tile_k=tile_k, stages=stages, split_k=split_k, w_swizzle=w_swizzle)
                label = dict(n=n, k=k, m=m, variant="kernel", decode=decode, **cfg)
                try:
                    fn = functools.partial(mx_wo_gemm, decode=decode, **cfg)
                    out = jax.jit(fn)(*prepared[0]).sum(0).T
                    err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
                    t = device_time(fn, prepared)
                except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
                    msg = failure(e)
                    print(f"  {decode} {cfg}: FAILED {msg}", flush=True)
                    rows.append(dict(label, error=msg))
                    continue
                print(f"  {decode} {cfg}: {t * 1e6:.1f} us ({t_bf16 / t:.2f}x bf16) rel err {err:.1e}", flush=True)
                rows.append(dict(label, us=t * 1e6, speedup=t_bf16 / t, rel_err=err))
                if decode != "f16_noscale" and t < best.get(decode, (1.0,))[0]:
                    best[decode] = (t, cfg)
        # End to end from a raw bf16 activation: quantize + decode it (one Pallas pass), the kernel,
        # the split-K sum and transpose; against the shipped hopper backend and jnp.dot, same run.
        mx_sets = [(x, MXArray(w, s), w, s) for w, s, x in sets]
        cands = {"shipped_hopper": lambda x, q, w, s: hopper.matmul(x, q, jnp.bfloat16)}
        for decode, (_, cfg) in best.items():

            def e2e(x, q, w, s, decode=decode, cfg=cfg):
                ops = kernel_operands(w, s, hopper.decode_operand(x), decode)
                return mx_wo_gemm(*ops, decode=decode, **cfg).sum(0).T.astype(jnp.bfloat16)

            cands[f"mosaic_{decode} {cfg}"] = e2e
        for name, fn in cands.items():
            xq_ref = reference(sets[0][0], sets[0][1], hopper.decode_operand(sets[0][2]))
            out = jax.jit(fn)(*mx_sets[0]).astype(jnp.float32)
            err = float(jnp.max(jnp.abs(out - xq_ref)) / jnp.max(jnp.abs(xq_ref)))
            t = device_time(fn, mx_sets)
            print(f"  e2e {name}: {t * 1e6:.1f} us ({t_bf16 / t:.2f}x bf16) rel err {err:.1e}", flush=True)
            rows.append(dict(n=n, k=k, m=m, variant="e2e " + name, us=t * 1e6, speedup=t_bf16 / t, rel_err=err))
        write_json("mosaic_decode_probe.json", dict(environment=env, rows=rows))


if __name__ == "__main__":
    main()
