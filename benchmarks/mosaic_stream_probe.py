"""Probe: what caps the Mosaic GPU kernel at M <= 16 (its TMA stream ran ~1.9 TB/s on an H100, copy ~2.9)?

Two suspects, timed with the compute warpgroups idle (``consumer="none"``: the pipeline
streams the fp8 weight and the activation and nothing else) and with the shipped decode
+ wgmma step (``consumer="full"``), M = 16, against bf16 ``jnp.dot`` in the same run:

- **schedule**: ``split`` is the shipped grid (one CTA per 128 weight rows, K split until
  >= 100 CTAs; e.g. 112 CTAs on 132 SMs at (14336, 4096)); ``balanced`` launches one CTA
  per SM and gives each an equal run of (row tile, K step) units, crossing row tiles
  (stream-K). Balanced runs only the stream (its partial sums would need a fix-up).
- **layout**: ``native`` reads ``[128, tile_k]`` boxes of the ``[N, K]`` weight (128
  rows, ``tile_k`` bytes each, ``K`` bytes apart); ``tiled`` reads the same boxes from a
  copy of the weight stored box after box, so each box is one contiguous run of bytes.

Also timed: the copy bandwidth and an XLA reduction that reads the fp8 weight once.
Run on the device: ``PYTHONPATH=. python3 benchmarks/mosaic_stream_probe.py [--sweep|--resident|--wide|--decode]``;
JSON to $OUT/mosaic_stream_probe[_sweep|_resident|_wide|_decode].json. ``--sweep`` times the second set (bytes in
flight per CTA, layout and K split, both consumers), ``--resident`` the third (the activation
resident in shared memory, ``consumer="resident"``), ``--wide`` the fourth (4 compute
warpgroups per CTA, launch-aware registers), ``--decode`` the fifth (the shipped fp8 decode, checked bit
for bit first, with 2 and 4 warpgroups), each at the two M <= 16 target shapes.
Timed with ``timing.loop_time``; the recorded H200 runs of the first two sets
(results/mosaic_stream_probe*_h200.*) used the queued timer, ``timing.device_time``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_decode_probe import operands  # noqa: E402
from mosaic_registers import launch_aware_registers  # noqa: E402
from timing import copy_bandwidth, environment, failure, loop_time, rotation_copies, write_json  # noqa: E402

from mxfp8_xla.backends.hopper_mosaic import (  # noqa: E402
    BLOCK,
    ROWS,
    decode_with_factor,
    load_row_scales,
    split_for_ctas,
)
from mxfp8_xla.numerics import scale_to_factor  # noqa: E402

PROFILE_RANGES = 320  # profiled ranges per warpgroup: 5 per step, <= 32 steps per CTA at the probe shapes, with room


@dataclasses.dataclass(frozen=True)
class Stream:
    schedule: str = "split"  # split | balanced
    layout: str = "native"  # native | tiled
    tile_k: int = 128
    stages: int = 4
    consumer: str = "none"  # none | full | resident
    min_ctas: int = 100  # split: K is split until at least this many CTAs (the shipped rule, hopper.MOSAIC_MIN_CTAS)
    wgs: int = 2  # compute warpgroups of 64 weight rows each (the shipped kernel has 2)
    memory_registers: int = 40  # registers per thread kept by the producer warpgroup
    auto_barriers: bool = True  # False: CompilerParams(unsafe_no_auto_barriers=True)
    # bytes: the next step's scale bytes loaded a step ahead and turned into float32 factors by the step that
    # uses them (shipped since 2026-11-30); factors: turned into factors at once (shipped before; 4-19% slower)
    scales: str = "bytes"
    # jax: the pipeline's own compute-register count; launch: mosaic_registers.within_launch (4 warpgroups hang
    # with jax's: they ask more registers than the CTA was launched with)
    compute_registers: str = "jax"


def tiled(w, rows, tile_k):
    """``w [N, K]`` stored box after box: ``[(N/rows) * (K/tile_k) * rows, tile_k]``."""
    n, k = w.shape
    return w.reshape(n // rows, rows, k // tile_k, tile_k).transpose(0, 2, 1, 3).reshape(-1, tile_k)


def run(w, s, x, v: Stream, num_sms: int, profile_dir: str | None = None):
    """The pipeline over ``w`` (native ``[N, K]``, or :func:`tiled`) for ``v``; float32 partials ``[split, M, N]``.

    With ``profile_dir``, Mosaic GPU's in-kernel profiler records the step's named scopes
    (``step``, ``scales``, ``tile``, ``decode_mma``, ``mma_wait``) per warpgroup and writes a
    Perfetto trace there each time the kernel runs.
    """
    n, k = s.shape[0], s.shape[1] * BLOCK
    m = x.shape[0]
    kt = k // v.tile_k
    cta_rows = ROWS * v.wgs
    units = (n // cta_rows) * kt
    if v.schedule == "balanced":
        assert v.consumer == "none"
        split, grid, per = 1, (num_sms, 1), -(-units // num_sms)
    else:
        split = split_for_ctas(n, k, v.wgs, v.tile_k, min_ctas=v.min_ctas)
        grid, per = (n // cta_rows, split), kt // split

    def kernel(w_gmem, s_gmem, x_gmem, o_gmem):
        i_n, i_s, wg = lax.axis_index("n"), lax.axis_index("s"), lax.axis_index("wg")
        first = i_n * per if v.schedule == "balanced" else i_n * kt + i_s * per  # this CTA's first unit

        def unit(t):
            return jnp.minimum(first + t, units - 1)

        my_rows = pl.ds(i_n * cta_rows + wg * ROWS, ROWS)
        blocks = v.tile_k // BLOCK

        def load_scales(t):
            """Step ``t``'s scale bytes for this warpgroup's rows (``hopper_mosaic.load_row_scales``), or
            their float32 factors for ``scales="factors"``."""
            loaded = load_row_scales(s_gmem, my_rows, (i_s * per + t) * blocks, blocks)
            return tuple(map(scale_to_factor, loaded)) if v.scales == "factors" else loaded

        def w_map(t):
            return (unit(t), 0) if v.layout == "tiled" else (unit(t) // kt, lax.rem(unit(t), kt))

        x_transforms = (plgpu.TilingTransform((8, BLOCK)), plgpu.SwizzleTransform(64))

        def run_pipeline_over(x_res):
            """The pipeline; ``x_res`` is the CTA's activation slice resident in shared memory, or None."""

            def step(idx, w_smem, *rest):
                *x_smem, carry = rest
                if v.consumer == "none":
                    return carry
                acc_ref, scales = carry
                with jax.named_scope("step"):
                    with jax.named_scope("scales"):
                        upcoming = load_scales(jnp.minimum(idx[0] + 1, per - 1))
                    with jax.named_scope("tile"):
                        tile = w_smem[pl.ds(wg * ROWS, ROWS)]
                    with jax.named_scope("decode_mma"):
                        factors = scales if v.scales == "factors" else tuple(map(scale_to_factor, scales))
                        for j in range(blocks):
                            w_block = decode_with_factor(tile[:, j * BLOCK : (j + 1) * BLOCK], factors[j])
                            if x_res is None:
                                x_block = x_smem[0].at[:, pl.ds(j * BLOCK, BLOCK)]
                            else:
                                x_at = pl.multiple_of(idx[0] * v.tile_k + j * BLOCK, BLOCK)
                                x_block = x_res.at[:, pl.ds(x_at, BLOCK)]
                            plgpu.wgmma(acc_ref, w_block, x_block.T)
                    # resident: the stage holds only the weight, already in registers, so it is released
                    # with this step's MMAs in flight (the step before's must be done: their registers go)
                    with jax.named_scope("mma_wait"):
                        plgpu.wgmma_wait(0 if x_res is None else blocks)
                return acc_ref, upcoming

            def compute_context(run_pipeline):
                if v.consumer == "none":
                    run_pipeline(())
                    return

                @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((ROWS, m), jnp.float32))
                def _(acc_ref):
                    run_pipeline((acc_ref, load_scales(0)))
                    plgpu.wgmma_wait(0)
                    out = plgpu.layout_cast(acc_ref[...], plgpu.Layout.WGMMA_TRANSPOSED)
                    o_gmem.at[i_s, :, my_rows].transpose((1, 0))[...] = out

            w_spec = plgpu.BlockSpec(
                (cta_rows, v.tile_k), w_map, transforms=(plgpu.TilingTransform((8, 128)), plgpu.SwizzleTransform(128))
            )
            x_spec = plgpu.BlockSpec((m, v.tile_k), lambda t: (0, lax.rem(unit(t), kt)), transforms=x_transforms)
            pipeline = plgpu.emit_pipeline_warp_specialized(
                step,
                grid=(per,),
                memory_registers=v.memory_registers,
                in_specs=[w_spec] if x_res is not None else [w_spec, x_spec],
                wg_axis="wg",
                num_compute_wgs=v.wgs,
                max_concurrent_steps=v.stages,
                compute_context=compute_context,
            )
            with launch_aware_registers() if v.compute_registers == "launch" else contextlib.nullcontext():
                if x_res is None:
                    pipeline(w_gmem, x_gmem)
                else:
                    pipeline(w_gmem)

        if v.consumer != "resident":
            run_pipeline_over(None)
            return

        @functools.partial(
            pl.run_scoped,
            x_res=plgpu.SMEM((m, per * v.tile_k), jnp.bfloat16, transforms=x_transforms),
            bar=plgpu.Barrier(num_arrivals=1),
            collective_axes="wg",  # one allocation, shared by every warpgroup
        )
        def _(x_res, bar):
            @pl.when(wg == 0)
            def _():
                plgpu.copy_gmem_to_smem(x_gmem.at[:, pl.ds(i_s * per * v.tile_k, per * v.tile_k)], x_res, bar)

            plgpu.barrier_wait(bar)
            run_pipeline_over(x_res)

    return plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((split, m, n), jnp.float32),
        grid=grid,
        grid_names=("n", "s"),
        num_threads=v.wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=plgpu.LoweringSemantics.Warpgroup,
            unsafe_no_auto_barriers=not v.auto_barriers,
            **(dict(profile_space=PROFILE_RANGES, profile_dir=profile_dir) if profile_dir else {}),
        ),
    )(w, s, x)


def reference(w, s, x):
    factor = jnp.repeat(jnp.ldexp(jnp.float32(1), s.astype(jnp.int32) - 127), BLOCK, axis=1)
    return jnp.dot(x.astype(jnp.float32), (w.astype(jnp.float32) * factor).T, precision=lax.Precision.HIGHEST)


FIRST = [
    Stream(),
    Stream(layout="tiled"),
    Stream(schedule="balanced"),
    Stream(schedule="balanced", layout="tiled"),
    Stream(schedule="balanced", layout="tiled", tile_k=256),
    Stream(schedule="balanced", stages=8),
    Stream(schedule="balanced", layout="tiled", stages=8),
    Stream(consumer="full"),
    Stream(layout="tiled", consumer="full"),
]

# Second run (``--sweep``): bytes in flight per CTA (stages x tile_k, within shared memory), the
# layout, and two K splits (min_ctas 100 and 128), with and without the decode + wgmma consumer.
SWEEP = [
    *(
        Stream(layout=layout, tile_k=tile_k, stages=stages, consumer=consumer, min_ctas=min_ctas)
        for consumer in ("none", "full")
        for layout in ("native", "tiled")
        for tile_k, stages in ((128, 4), (128, 8), (128, 10), (256, 4), (256, 5))
        for min_ctas in (100, 128)
    ),
    Stream(schedule="balanced", layout="tiled", stages=8),
    Stream(schedule="balanced", layout="tiled", stages=10),
]

# Third set (``--resident``): the CTA's activation slice loaded once into shared memory, so a
# stage holds only the weight and is released while its MMAs are still in flight, against
# the shipped step (activation in the stage, ``wgmma_wait(0)`` every step).
RESIDENT = [
    Stream(tile_k=128, stages=stages, consumer=consumer, min_ctas=min_ctas)
    for min_ctas in (100, 128)
    for consumer, stages in (("full", 4), ("full", 8), ("resident", 3), ("resident", 4))  # within shared memory
]

# Fourth set (``--wide``): 4 compute warpgroups per CTA (256 weight rows) instead of 2, i.e.
# twice the step chains in flight per SM, with launch-aware compute registers (with jax's own
# count they hang: mosaic_registers.py), scales either way, then the 2-warpgroup step to compare.
WIDE = [
    Stream(stages=4, consumer=consumer, min_ctas=100, wgs=4, scales=scales, compute_registers="launch")
    for consumer, scales in (("none", "factors"), ("full", "factors"), ("full", "bytes"), ("resident", "bytes"))
] + [Stream(consumer="full", scales=scales) for scales in ("factors", "bytes")]

# Fifth set (``--decode``): the shipped fp8 -> bf16 decode (through float32) with 2 compute warpgroups and
# with 4 (launch-aware registers). Each variant first decodes a weight holding every finite E4M3 code at
# scale bytes from 0 (bf16 subnormals) to 246 (near bf16's top), picked out exactly by one-hot activation
# rows, and is compared bit for bit with NumPy (:func:`decode_check`). (Until commit 71607b0 it also ran a
# direct fp8 -> bf16 convert, cvt.rn.bf16x2.e4m3x2; ptxas 13.2 refuses it for sm_90a: a Blackwell
# instruction, results/mosaic_stream_probe_decode_ptxas132_h200.log.)
DECODE = [Stream(consumer="full", wgs=wgs, compute_registers="launch" if wgs == 4 else "jax") for wgs in (2, 4)]
EDGE_BYTES = np.array([0, 1, 2, 3, 9, 10, 100, 127, 150, 200, 246], np.uint8)


def decode_check(v: Stream, num_sms: int) -> dict:
    """Decoded weight elements, read out through the kernel, against NumPy's exact bf16 (see :data:`DECODE`).

    Activation row ``i`` is one-hot at column ``c_i`` (16 columns in 16 different blocks), so output
    ``[i, n]`` is the decoded ``w[n, c_i]`` times 1, summed with exact zeros.
    """
    n, k, m = 256 * v.wgs, 1024, 16
    codes = np.arange(256, dtype=np.uint8)
    finite = codes[~np.isnan(codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32))]
    w = finite[(np.arange(n)[:, None] * 7 + np.arange(k)[None, :]) % len(finite)]
    s = EDGE_BYTES[(np.arange(n)[:, None] + np.arange(k // BLOCK)[None, :]) % len(EDGE_BYTES)]
    cols = np.arange(m) * 64 + np.arange(m) % BLOCK
    x = np.zeros((m, k), np.float32)
    x[np.arange(m), cols] = 1
    values = w[:, cols].view(ml_dtypes.float8_e4m3fn).astype(np.float64)  # [n, m]
    want = (values * 2.0 ** (s[:, cols // BLOCK].astype(np.float64) - 127)).astype(ml_dtypes.bfloat16).T
    out = run(
        jnp.asarray(w.view(ml_dtypes.float8_e4m3fn)),
        jnp.asarray(s),
        jnp.asarray(x, jnp.bfloat16),
        v=v,
        num_sms=num_sms,
    ).sum(0)
    got = np.asarray(out)
    wrong = got != want.astype(np.float32)
    first = [float(got[wrong][0]), float(want.astype(np.float32)[wrong][0])] if wrong.any() else []
    return dict(elements=int(wrong.size), mismatches=int(wrong.sum()), first_got_want=first)


def main() -> None:
    env = environment()
    num_sms = jax.devices()[0].core_count
    copy = copy_bandwidth()
    env.update(num_sms=num_sms, copy_tb_s=copy / 1e12)
    print(env, flush=True)
    mode = next((a[2:] for a in sys.argv[1:] if a in ("--sweep", "--resident", "--wide", "--decode")), None)
    variants = {"sweep": SWEEP, "resident": RESIDENT, "wide": WIDE, "decode": DECODE, None: FIRST}[mode]
    checks = []
    for v in variants if mode == "decode" else ():
        try:
            checks.append(dict(dataclasses.asdict(v), **decode_check(v, num_sms)))
        except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
            checks.append(dict(dataclasses.asdict(v), error=failure(e)))
        print(f"decode check: {checks[-1]}", flush=True)
    shapes = ((14336, 4096), (4096, 14336)) if mode else ((14336, 4096), (4096, 14336), (28672, 4096), (4096, 4096))
    rows = []
    for n, k in shapes:
        nbytes = n * k + n * k // BLOCK
        sets = operands(n, k, 16, copies=rotation_copies(nbytes, least=3))
        t_bf16 = loop_time(lambda w, x: jnp.dot(x, w.T), [(w.astype(jnp.bfloat16), x) for w, _, x in sets])
        t_read = loop_time(
            lambda w: jnp.max(lax.bitcast_convert_type(w, jnp.uint8), axis=1), [(w,) for w, _, _ in sets]
        )
        print(
            f"== N={n} K={k}: bf16 jnp.dot {t_bf16 * 1e6:.1f} us; XLA reads the fp8 weight in {t_read * 1e6:.1f} us "
            f"({n * k / t_read / 1e12:.2f} TB/s)",
            flush=True,
        )
        rows.append(dict(n=n, k=k, bf16_us=t_bf16 * 1e6, xla_read_us=t_read * 1e6))
        ref = np.asarray(reference(*sets[0]))
        seen = set()
        for v in variants:
            if v.schedule == "split":  # two min_ctas that give the same split are one kernel
                key = dataclasses.replace(v, min_ctas=split_for_ctas(n, k, v.wgs, v.tile_k, min_ctas=v.min_ctas))
                if key in seen:
                    continue
                seen.add(key)
            label = dict(n=n, k=k, m=16, **dataclasses.asdict(v))
            try:
                vsets = [(tiled(w, ROWS * v.wgs, v.tile_k) if v.layout == "tiled" else w, s, x) for w, s, x in sets]
                fn = functools.partial(run, v=v, num_sms=num_sms)
                err = None
                if v.consumer != "none":
                    out = np.asarray(jax.jit(fn)(*vsets[0]).sum(0))
                    err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
                t = loop_time(fn, vsets)
            except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
                msg = failure(e)
                print(f"  {v}: FAILED {msg}", flush=True)
                rows.append(dict(label, error=msg))
                continue
            print(
                f"  {v}: {t * 1e6:.1f} us, {nbytes / t / 1e12:.2f} TB/s, {t_bf16 / t:.2f}x bf16, rel err {err}",
                flush=True,
            )
            rows.append(dict(label, us=t * 1e6, weight_tb_s=nbytes / t / 1e12, speedup=t_bf16 / t, rel_err=err))
            del vsets
        name = f"mosaic_stream_probe_{mode}.json" if mode else "mosaic_stream_probe.json"
        write_json(name, dict(environment=env, decode_checks=checks, rows=rows))


if __name__ == "__main__":
    main()
