"""Large M: can a Mosaic GPU GEMM that decodes the fp8 weight in registers run at cuBLAS's speed?

Today the ``hopper`` backend decodes the weight to bf16 in HBM before cuBLAS at M > 256
(0.80-0.94x of bf16 at M = 2048 on an H200). This probe asks whether the decode can move
into the GEMM. It times, at M = 2048 by default and each Llama-3-8B shape, in one process
(``timing.loop_time``; operand sets rotate through >= 150 MB of fp8 weight):

- ``bf16``: ``jnp.dot(x, w.T)`` on the bf16 weight stored ``[N, K]`` (the baseline);
- ``routed``: ``hopper.matmul`` end to end, as the backend routes M today;
- ``jax_bf16``: jax's own warp-specialized Mosaic GPU matmul
  (``pallas/ops/gpu/hopper_matmul_mgpu``) on bf16 ``x`` and ``w.T`` stored ``[K, N]``: how
  close a Mosaic GPU kernel gets to cuBLAS here, with no decode at all;
- ``jax_int8``: jax's mixed-type Mosaic GPU matmul (``hopper_mixed_type_matmul_mgpu``), an
  int8 weight converted to bf16 in registers, output ``[N, M]``: the cost of an in-register
  convert without scales;
- ``large T=.. st=.. lag=..``: this probe's kernel (:func:`large_m_matmul`), the shipped
  small-M kernel's step (``hopper_mosaic``: ``[64, 32]`` blocks decoded with their E8M0
  factor in registers, fed to ``wgmma`` as the A operand) tiled over M, ``T`` activation rows
  per CTA, kernel alone on the exact bf16 activation (with ``--with-act``, ``+act``: from the raw
  rows, that pass inside the timed call); ``act`` times that activation's own pass
  (``hopper.decode_operand``: quantize and decode in one Pallas kernel), which precedes it.

Every MXFP8 candidate is checked against the emulation backend on the first operand set. With
``--profile-rows M``, Mosaic GPU's in-kernel profiler first times the named scopes of the step of
:data:`PROFILED` at (14336, 4096) (``mosaic_profile.profile``).
Run on the device: ``PYTHONPATH=. python3 benchmarks/mosaic_large_m_probe.py [--set scales]
[--rows 2048] [--shapes 0,1] [--skip jax_int8,...] [--profile-rows 512]``; JSON to
$OUT/mosaic_large_m_probe.json. ``--set`` picks one of :data:`CONFIG_SETS`, one per device call of
the first runs.

What those runs found (H200, results/mosaic_large_m_probe_*_h200.*; docs/benchmark_log.md, "A
weight-decoding GEMM for large M"): at M = 2048 jax's bf16 kernel ran 0.94-1.03x of cuBLAS, so a
Mosaic GPU GEMM can run at cuBLAS's speed here. This kernel reached 0.87-0.89x of bf16 alone at best
(persistent, scale bytes through shared memory, a bf16 multiply), and 0.92-0.96x with the scale
factor left out (a wrong result, the decode's floor). With the activation's own pass in the timed call
(``--with-act``) the best exact variant ran 0.81-0.86x against the routed backend's 0.82-0.89x, behind
it at every shape; the floor 0.86-0.92x. The backend's large-M route is unchanged. ``lag=1`` was no
faster where it was right, and ``--lag-check`` found it wrong only with the weight in registers at
256 activation rows per CTA (right at 128 and 192 rows, and at 256 with the weight from shared
memory): the in-flight MMA's register operand looks overwritten by the next step (docs/upstream.md).
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
from mosaic_profile import cells, profile  # noqa: E402
from mosaic_sweep import SHAPES, dequant_bf16, operands, reference, rel_err  # noqa: E402
from timing import environment, failure, loop_time, write_json  # noqa: E402

from mxfp8_xla import numerics  # noqa: E402
from mxfp8_xla.backends import hopper, hopper_mosaic  # noqa: E402
from mxfp8_xla.mxarray import MXArray  # noqa: E402

BLOCK = numerics.BLOCK_SIZE
ROWS = hopper_mosaic.ROWS  # weight rows per compute warpgroup (wgmma's M)


@dataclasses.dataclass(frozen=True)
class LargeConfig:
    """``tokens`` activation rows per CTA (wgmma's N, <= 256); ``num_wgs`` compute warpgroups of 64
    weight rows; ``stages`` pipeline steps of ``tile_k`` in flight; ``lag`` 1 lets a step's last MMA
    run under the next step's decode (its shared-memory stage released a step later).

    ``weight`` isolates the decode: ``"fp8"`` is the real kernel; ``"convert"`` turns the fp8 tile to
    bf16 without its scale factor (wrong result: the factor's cost); ``"bf16"`` reads a weight already
    decoded to bf16 and hands wgmma both operands from shared memory (the pipeline with no decode; the scale
    bytes are still loaded);
    ``"bf16mul"`` converts the codes to bf16 first and multiplies by a bf16 factor (one packed
    multiply per two elements instead of one float32 multiply per element; the same exact result).

    ``scales="gmem"`` reads each step's scale bytes from the ``[N, K/32]`` array in global memory one
    step ahead (as ``hopper_mosaic``); ``"smem"`` takes them transposed, ``[K/32, N]`` (transposed by
    XLA in the timed call), as a third TMA input of the pipeline.

    ``persistent`` runs one CTA per SM that walks the output tiles (as jax's ``hopper_matmul_mgpu``),
    weight-tile-major with all of M's tiles together (``snake=0``) or jax's ``planar_snake`` over
    (M tiles, N tiles) with the M axis minor in bands of ``snake`` tiles.
    """

    tokens: int = 256
    num_wgs: int = 2
    tile_k: int = 128
    stages: int = 2
    lag: int = 0
    weight: str = "fp8"
    persistent: bool = False
    snake: int = 0
    scales: str = "gmem"

    def label(self) -> str:
        extra = "" if self.weight == "fp8" else f" weight={self.weight}"
        if self.persistent:
            extra += f" persistent snake={self.snake or 'M'}"
        if self.scales != "gmem":
            extra += f" scales={self.scales}"
        return f"large T={self.tokens} tk={self.tile_k} st={self.stages} lag={self.lag}{extra}"

    def weight_bytes(self) -> int:
        return 2 if self.weight == "bf16" else 1

    def check(self, m: int, n: int, k: int) -> str | None:
        """Why this config cannot run ``[m, k] x [n, k]``, or None."""
        stage = (ROWS * self.num_wgs * self.weight_bytes() + self.tokens * 2) * self.tile_k
        if self.stages * stage > hopper_mosaic.SMEM_BUDGET:
            return f"{self.stages} stages of {stage} bytes exceed shared memory"
        if m % self.tokens or n % (ROWS * self.num_wgs) or k % self.tile_k:
            return f"({m}, {n}, {k}) does not tile by ({self.tokens}, {ROWS * self.num_wgs}, {self.tile_k})"
        return None


def decode_bf16_multiply(codes: jax.Array, factor: jax.Array) -> jax.Array:
    """``hopper_mosaic.decode_with_factor`` with the multiply in bf16: E4M3 ``codes [R, 32]`` to bf16 (exact),
    times each row's power-of-two ``factor [R]`` (float32) as bf16, rounded once like the float32 product."""
    factor = lax.broadcast_in_dim(factor.astype(jnp.bfloat16), codes.shape, [0])
    return codes.astype(jnp.float32).astype(jnp.bfloat16) * factor


def _tile(w_gmem, s_gmem, x_gmem, o_gmem, i_m, i_n, *, cfg: LargeConfig, k: int, allocations=None) -> None:
    """Output tile ``(i_m, i_n)``: ``cfg.tokens`` activation rows by ``64 * num_wgs`` weight rows."""
    wg = lax.axis_index("wg")
    cta_rows = ROWS * cfg.num_wgs
    wg_rows = pl.ds(wg * ROWS, ROWS)
    my_rows = pl.ds(i_n * cta_rows + wg * ROWS, ROWS)
    tokens = pl.ds(i_m * cfg.tokens, cfg.tokens)
    steps, blocks = k // cfg.tile_k, cfg.tile_k // BLOCK

    def load_scales(t):
        if cfg.scales == "smem":
            return ()
        return hopper_mosaic.load_row_scales(s_gmem, my_rows, t * blocks, blocks)

    def step(idx, w_smem, x_smem, *rest):
        *s_smem, (acc_ref, scale_bytes) = rest
        with jax.named_scope("step"):
            with jax.named_scope("scales"):
                upcoming = load_scales(jnp.minimum(idx[0] + 1, steps - 1))
                if s_smem:
                    scale_bytes = tuple(
                        hopper_mosaic.load_whole(s_smem[0].at[j, wg_rows], hopper_mosaic.row_layout())
                        for j in range(blocks)
                    )
                factors = tuple(map(numerics.scale_to_factor, scale_bytes))
            if cfg.weight != "bf16":
                with jax.named_scope("tile"):
                    tile = w_smem[wg_rows]
            with jax.named_scope("decode_mma"):
                for j in range(blocks):
                    x_block = x_smem.at[:, pl.ds(j * BLOCK, BLOCK)].T
                    if cfg.weight == "bf16":
                        plgpu.wgmma(acc_ref, w_smem.at[wg_rows, pl.ds(j * BLOCK, BLOCK)], x_block)
                        continue
                    codes = tile[:, j * BLOCK : (j + 1) * BLOCK]
                    if cfg.weight == "convert":
                        w_block = codes.astype(jnp.float32).astype(jnp.bfloat16)
                    elif cfg.weight == "bf16mul":
                        w_block = decode_bf16_multiply(codes, factors[j])
                    else:
                        w_block = hopper_mosaic.decode_with_factor(codes, factors[j])
                    plgpu.wgmma(acc_ref, w_block, x_block)
            with jax.named_scope("mma_wait"):
                plgpu.wgmma_wait(cfg.lag)
        return acc_ref, upcoming

    def compute_context(run_pipeline):
        @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((ROWS, cfg.tokens), jnp.float32))
        def _(acc_ref):
            run_pipeline((acc_ref, load_scales(0)))
            plgpu.wgmma_wait(0)
            out = plgpu.layout_cast(acc_ref[...].astype(o_gmem.dtype), plgpu.Layout.WGMMA_TRANSPOSED)
            hopper_mosaic.store_to_gmem(o_gmem.at[tokens, my_rows].transpose((1, 0)), out)

    pipeline = _pipeline(step, compute_context, cfg, steps)
    inputs = [w_gmem.at[pl.ds(i_n * cta_rows, cta_rows)], x_gmem.at[tokens]]
    if cfg.scales == "smem":
        inputs.append(s_gmem.at[:, pl.ds(i_n * cta_rows, cta_rows)])
    if allocations is None:
        pipeline(*inputs)
    else:
        pipeline(*inputs, allocations=allocations)


def _pipeline(step, compute_context, cfg: LargeConfig, steps: int):
    """The warp-specialized pipeline over K: weight ``[64 * num_wgs, tile_k]`` and activation
    ``[tokens, tile_k]`` tiles (the activation in 32-column swizzle tiles, one MX block each)."""
    w_swizzle = min(128, cfg.tile_k) if cfg.weight != "bf16" else 64
    w_tile = w_swizzle if cfg.weight != "bf16" else BLOCK
    return plgpu.emit_pipeline_warp_specialized(
        step,
        grid=(steps,),
        memory_registers=40,
        in_specs=[
            plgpu.BlockSpec(
                (ROWS * cfg.num_wgs, cfg.tile_k),
                lambda t: (0, t),
                transforms=(plgpu.TilingTransform((8, w_tile)), plgpu.SwizzleTransform(w_swizzle)),
                delay_release=cfg.lag,
            ),
            plgpu.BlockSpec(
                (cfg.tokens, cfg.tile_k),
                lambda t: (0, t),
                transforms=(plgpu.TilingTransform((8, BLOCK)), plgpu.SwizzleTransform(64)),
                delay_release=cfg.lag,
            ),
            *(
                [plgpu.BlockSpec((cfg.tile_k // BLOCK, ROWS * cfg.num_wgs), lambda t: (t, 0), delay_release=cfg.lag)]
                if cfg.scales == "smem"
                else []
            ),
        ],
        wg_axis="wg",
        num_compute_wgs=cfg.num_wgs,
        max_concurrent_steps=cfg.stages,
        compute_context=compute_context,
    )


def _large_kernel(w_gmem, s_gmem, x_gmem, o_gmem, *, cfg: LargeConfig, k: int) -> None:
    """One CTA per output tile."""
    _tile(w_gmem, s_gmem, x_gmem, o_gmem, lax.axis_index("m"), lax.axis_index("n"), cfg=cfg, k=k)


def _persistent_kernel(w_gmem, s_gmem, x_gmem, o_gmem, *, cfg: LargeConfig, k: int) -> None:
    """One CTA per SM, walking the output tiles; the pipeline's shared memory is allocated once."""
    m_tiles = x_gmem.shape[0] // cfg.tokens
    n_tiles = w_gmem.shape[0] // (ROWS * cfg.num_wgs)
    ignore = lambda *_, **__: None  # noqa: E731 - the allocations do not depend on the bodies
    first = [w_gmem.at[pl.ds(0, ROWS * cfg.num_wgs)], x_gmem.at[pl.ds(0, cfg.tokens)]]
    if cfg.scales == "smem":
        first.append(s_gmem.at[:, pl.ds(0, ROWS * cfg.num_wgs)])
    allocs = _pipeline(ignore, ignore, cfg, k // cfg.tile_k).get_allocations(*first)

    @functools.partial(pl.run_scoped, allocations=allocs, collective_axes="wg")
    def _(allocations):
        @plgpu.nd_loop((m_tiles * n_tiles,), collective_axes="sm")
        def _(info):
            (lin,) = info.index
            if cfg.snake:
                i_m, i_n = plgpu.planar_snake(lin, (m_tiles, n_tiles), 0, cfg.snake)
            else:
                i_m, i_n = lax.rem(lin, m_tiles), lin // m_tiles
            _tile(w_gmem, s_gmem, x_gmem, o_gmem, i_m, i_n, cfg=cfg, k=k, allocations=allocations)


def large_m_matmul(
    x: jax.Array,
    data: jax.Array,
    scale: jax.Array,
    out_dtype,
    cfg: LargeConfig,
    profile_dir: str | None = None,
    num_sms: int | None = None,
) -> jax.Array:
    """``x [M, K] @ w.T`` for an exact bf16 ``x`` and the MXFP8 weight ``w = (data [N, K], scale [N, K/32])``,
    decoded per ``[64, 32]`` block in registers (for ``cfg.weight == "bf16"``, ``data`` is the decoded bf16
    weight and ``scale`` is not read).

    The grid's first axis walks M, so the CTAs resident at once share weight tiles through L2 (a
    ``persistent`` config runs ``num_sms`` CTAs, by default the device's SM count). With
    ``profile_dir``, Mosaic GPU's profiler records the step's named scopes (``step``, ``scales``,
    ``tile``, ``decode_mma``, ``mma_wait``) per warpgroup into a Perfetto trace there.
    """
    m, k = x.shape
    n = data.shape[0]
    reason = cfg.check(m, n, k)
    if reason:
        raise ValueError(f"large-M Mosaic kernel: cannot run x [{m}, {k}] @ w [{n}, {k}].T: {reason}")
    tile_grid = (m // cfg.tokens, n // (ROWS * cfg.num_wgs))
    if cfg.persistent:
        num_sms = num_sms or jax.devices()[0].core_count
        grid = dict(grid=(num_sms,), grid_names=("sm",))
        tiles_per_cta = -(-tile_grid[0] * tile_grid[1] // num_sms)
    else:
        grid, tiles_per_cta = dict(grid=tile_grid, grid_names=("m", "n")), 1
    ranges = 5 * (k // cfg.tile_k) * tiles_per_cta + 8  # the step's five scopes per step and tile, with room
    profiling = dict(profile_space=ranges, profile_dir=profile_dir) if profile_dir else {}
    if cfg.scales == "smem":
        scale = scale.T
    return plgpu.kernel(
        functools.partial(_persistent_kernel if cfg.persistent else _large_kernel, cfg=cfg, k=k),
        out_type=jax.ShapeDtypeStruct((m, n), out_dtype),
        **grid,
        num_threads=cfg.num_wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup, **profiling),
    )(data, scale, x.astype(jnp.bfloat16))


FIRST = LargeConfig()  # the shipped small-M kernel's step and tiles, tiled over M
PERSISTENT = LargeConfig(tile_k=64, stages=5, persistent=True)
CONFIG_SETS = {
    # call 1: the shipped step tiled over M, 128 or 256 activation rows per CTA
    "first": (FIRST, LargeConfig(lag=1), LargeConfig(tokens=128, stages=4), LargeConfig(tokens=128, stages=4, lag=1)),
    # call 2: what the decode costs (convert, bf16) and a finer K step
    "isolate": (
        FIRST,
        LargeConfig(weight="convert"),
        LargeConfig(weight="bf16"),
        LargeConfig(tile_k=64, stages=5),
        LargeConfig(tile_k=64, stages=4, lag=1),
    ),
    # call 3: one CTA per SM walking the tiles, as jax's own matmul
    "persistent": (
        LargeConfig(tile_k=64, stages=5),
        LargeConfig(tile_k=64, stages=4, persistent=True),
        PERSISTENT,
        LargeConfig(tile_k=64, stages=5, persistent=True, snake=4),
        LargeConfig(tile_k=64, stages=4, persistent=True, weight="bf16"),
        LargeConfig(tile_k=64, stages=4, persistent=True, weight="convert"),
    ),
    # call 4: cheaper scales: a packed bf16 multiply, the bytes through TMA and shared memory
    "scales": (
        PERSISTENT,
        dataclasses.replace(PERSISTENT, weight="bf16mul"),
        dataclasses.replace(PERSISTENT, scales="smem"),
        dataclasses.replace(PERSISTENT, weight="bf16mul", scales="smem"),
        dataclasses.replace(PERSISTENT, weight="convert"),
    ),
    # call 5 (with --with-act): the best exact kernel and the factor-free floor, end to end
    "end_to_end": (
        dataclasses.replace(PERSISTENT, weight="bf16mul", scales="smem"),
        dataclasses.replace(PERSISTENT, weight="convert"),
    ),
}
PROFILED = (FIRST, LargeConfig(weight="convert"), LargeConfig(weight="bf16"))


def jax_tiles(module):
    """jax's example kernels' config for ``module``: 128 x 128 tiles per warpgroup, two along the second operand's
    columns, ``tile_k`` 64, 4 stages, the grid walked in bands of 8 tiles."""
    return module.TuningConfig(
        tile_m=128,
        tile_n=128,
        tile_k=64,
        max_concurrent_steps=4,
        grid_minor_dim=module.MatmulDimension.N,
        grid_tile_width=8,
        wg_dimension=module.MatmulDimension.N,
    )


def weight_operand(cfg: LargeConfig, q: MXArray) -> jax.Array:
    """What :func:`large_m_matmul` takes as ``data`` for ``cfg``: the decoded bf16 weight for ``weight="bf16"``,
    else the E4M3 codes."""
    return dequant_bf16(q) if cfg.weight == "bf16" else q.data


def jax_kernels() -> dict:
    """jax's own Hopper Mosaic GPU matmuls, where this jax has them: ``name -> (fn, args)``, ``args(x, q, w_bf16)``
    giving ``fn``'s operands (transposed outside the timed call)."""
    found = {}
    try:
        from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm

        cfg = jax_tiles(hm)
        found["jax_bf16 128x256x64"] = (lambda x, wt: hm.matmul(x, wt, None, cfg), lambda x, q, wb: (x, wb.T))
    except Exception as e:  # noqa: BLE001 - reported; the probe goes on without it
        print(f"jax_bf16 unavailable: {failure(e)}", flush=True)
    try:
        from jax.experimental.pallas.ops.gpu import hopper_mixed_type_matmul_mgpu as hx

        xcfg = jax_tiles(hx)
        found["jax_int8 128x256x64 (out [N, M])"] = (
            lambda w8, xt: hx.mixed_matmul_kernel(w8, xt, out_dtype=jnp.bfloat16, config=xcfg),
            lambda x, q, wb: (lax.bitcast_convert_type(q.data, jnp.int8), x.T),
        )
    except Exception as e:  # noqa: BLE001
        print(f"jax_int8 unavailable: {failure(e)}", flush=True)
    return found


def profile_steps(n: int, k: int, m: int) -> list[dict]:
    """Median cycles per named scope of each :data:`PROFILED` config's step (``mosaic_profile.profile``)."""
    (x, q), *_ = operands(n, k, m, copies=1)
    x = jax.jit(hopper.decode_operand)(x)
    rows = []
    for cfg in PROFILED:
        d = weight_operand(cfg, q)

        def compiled(profile_dir, cfg=cfg):
            return jax.jit(lambda a, w, sc: large_m_matmul(a, w, sc, jnp.bfloat16, cfg, profile_dir))

        try:
            summary = profile(compiled, (x, d, q.scale), None)
        except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
            rows.append(dict(n=n, k=k, m=m, variant=cfg.label(), error=failure(e)))
            print(f"  profile {cfg.label()}: FAILED {rows[-1]['error']}", flush=True)
            continue
        print(
            f"  profile {cfg.label()} at ({n}, {k}), M={m}: {summary['warpgroups']} warpgroups; {cells(summary)}",
            flush=True,
        )
        rows.append(dict(n=n, k=k, m=m, variant=cfg.label(), profile=summary))
    return rows


LAG_CHECKED = (
    FIRST,
    LargeConfig(lag=1),
    LargeConfig(lag=1, weight="bf16"),
    LargeConfig(tile_k=64, stages=4, lag=1),
    LargeConfig(tile_k=64, stages=4, lag=1, weight="bf16"),
    LargeConfig(tokens=192, lag=1),
    LargeConfig(tokens=128, stages=4, lag=1),
    LargeConfig(tokens=128, stages=3, lag=1, weight="bf16"),
)


def lag_check(n: int = 1024, k: int = 1024, m: int = 768) -> list[dict]:
    """Which ``lag=1`` configs compute the right product (max-abs relative error against emulation, no timing):
    wgmma N of 128, 192 and 256, the weight from registers (``fp8``) or from shared memory (``bf16``)."""
    (x, q), *_ = operands(n, k, m, copies=1)
    ref = reference(x, q)
    x = jax.jit(hopper.decode_operand)(x)
    rows = []
    for cfg in LAG_CHECKED:
        d = weight_operand(cfg, q)
        try:
            err = rel_err(
                jax.jit(lambda a, w, sc, cfg=cfg: large_m_matmul(a, w, sc, jnp.float32, cfg))(x, d, q.scale), ref
            )
        except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
            rows.append(dict(n=n, k=k, m=m, variant=cfg.label(), error=failure(e)))
            print(f"  lag check {cfg.label()}: FAILED {rows[-1]['error']}", flush=True)
            continue
        rows.append(dict(n=n, k=k, m=m, variant=cfg.label(), rel_err=err))
        print(f"  lag check {cfg.label()} at ({n}, {k}), M={m}: rel err {err:.1e}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=lambda t: [int(r) for r in t.split(",")], default=[2048])
    ap.add_argument("--shapes", type=lambda t: [SHAPES[int(i)] for i in t.split(",")], help="indices into SHAPES")
    ap.add_argument("--skip", type=lambda t: t.split(","), default=[], help="name prefixes to leave out")
    ap.add_argument("--set", choices=sorted(CONFIG_SETS), default="scales", help="which configs to time")
    ap.add_argument("--profile-rows", type=int, default=0, help="M of the profiled runs at (14336, 4096); 0: none")
    ap.add_argument(
        "--with-act", action="store_true", help="time each kernel with the activation pass before it, from the raw rows"
    )
    ap.add_argument("--lag-check", action="store_true", help="only which lag=1 configs are right (lag_check)")
    args = ap.parse_args()
    env = environment()
    print(env, flush=True)
    if args.lag_check:
        write_json("mosaic_large_m_probe.json", dict(environment=env, rows=lag_check()))
        return
    rows = profile_steps(14336, 4096, args.profile_rows) if args.profile_rows else []
    jax_matmuls = jax_kernels()
    write_json("mosaic_large_m_probe.json", dict(environment=env, rows=rows))
    for n, k in args.shapes or SHAPES:
        for m in args.rows:
            sets = operands(n, k, m)
            bf16_sets = [(x, q.data.astype(jnp.bfloat16)) for x, q in sets]
            t_bf16 = loop_time(lambda x, wb: jnp.dot(x, wb.T), bf16_sets)
            print(f"== N={n} K={k} M={m}: bf16 jnp.dot {t_bf16 * 1e6:.1f} us", flush=True)
            rows.append(dict(n=n, k=k, m=m, variant="bf16", us=t_bf16 * 1e6))
            ref = reference(*sets[0])
            exact = [(jax.jit(hopper.decode_operand)(x), q) for x, q in sets]
            cands = {
                "routed": (lambda x, q: hopper.matmul(x, q, jnp.bfloat16), sets),
                "act": (lambda x, q: hopper.decode_operand(x), sets),
            }
            for cfg in CONFIG_SETS[args.set]:
                if cfg.check(m, n, k) is None:
                    source = sets if args.with_act else exact
                    feed = [(x, weight_operand(cfg, q), q.scale) for x, q in source]
                    act = hopper.decode_operand if args.with_act else (lambda x: x)
                    cands[cfg.label() + (" +act" if args.with_act else "")] = (
                        lambda x, d, s, cfg=cfg, act=act: large_m_matmul(act(x), d, s, jnp.bfloat16, cfg),
                        feed,
                    )
            for name, (fn, feed) in cands.items():
                if any(name.startswith(s) for s in args.skip):
                    continue
                try:
                    err = rel_err(jax.jit(fn)(*feed[0]).astype(jnp.float32), ref) if name != "act" else 0.0
                    t = loop_time(fn, feed)
                except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
                    rows.append(dict(n=n, k=k, m=m, variant=name, error=failure(e)))
                    print(f"  {name}: FAILED {rows[-1]['error']}", flush=True)
                    continue
                rows.append(dict(n=n, k=k, m=m, variant=name, us=t * 1e6, speedup=t_bf16 / t, rel_err=err))
                print(f"  {name}: {t * 1e6:.1f} us ({t_bf16 / t:.2f}x bf16), rel err {err:.1e}", flush=True)
            for name, (fn, make) in jax_matmuls.items():
                if any(name.startswith(s) for s in args.skip):
                    continue
                try:
                    feed = [jax.jit(make)(x, q, wb) for (x, q), (_, wb) in zip(sets, bf16_sets, strict=True)]
                    t = loop_time(fn, feed)
                except Exception as e:  # noqa: BLE001
                    rows.append(dict(n=n, k=k, m=m, variant=name, error=failure(e)))
                    print(f"  {name}: FAILED {rows[-1]['error']}", flush=True)
                    continue
                rows.append(dict(n=n, k=k, m=m, variant=name, us=t * 1e6, speedup=t_bf16 / t))
                print(f"  {name}: {t * 1e6:.1f} us ({t_bf16 / t:.2f}x bf16)", flush=True)
            write_json("mosaic_large_m_probe.json", dict(environment=env, rows=rows))


if __name__ == "__main__":
    main()
