"""Minimal check: does ``plgpu.emit_pipeline_warp_specialized`` finish with 3 or 4 compute warpgroups?

The stream probe's kernel hung on the H200 with 4 compute warpgroups, even with the compute
warpgroups idle (docs/benchmarks.md, "What caps the Mosaic kernel"). This kernel has nothing
of ours in it: one CTA streams ``steps`` tiles of ``[64 * wgs, 128]`` bytes through the
warp-specialized pipeline, and each compute warpgroup adds its 64 rows of every tile into a
float32 accumulator and writes it out. Each case runs in its own process under a time limit,
so a hang is reported and the next case still runs.

Run on the device: ``PYTHONPATH=. python3 benchmarks/mosaic_wgs_repro.py``; prints one line per
case (2, 3 or 4 compute warpgroups x 1 or 8 pipeline steps; Warpgroup lowering semantics, as
the backend's kernel): ``ok`` with the result checked against NumPy, ``FAILED`` with the
error, or ``HUNG``.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np

ROWS = 64  # rows per compute warpgroup
COLS = 128  # bytes per row: one 128-byte swizzle width of uint8
TIME_LIMIT_S = 45


def summed_rows(x: jax.Array, wgs: int, steps: int) -> jax.Array:
    """``x [64 * wgs, 128 * steps]`` uint8 -> float32 ``[64 * wgs, 128]``, the column tiles summed."""

    def kernel(x_gmem, o_gmem):
        wg = jax.lax.axis_index("wg")

        def step(_, x_smem, acc):
            return acc + x_smem[pl.ds(wg * ROWS, ROWS)].astype(jnp.float32)

        def compute_context(run_pipeline):
            acc = run_pipeline(jnp.zeros((ROWS, COLS), jnp.float32))
            o_gmem[pl.ds(wg * ROWS, ROWS), :] = acc

        plgpu.emit_pipeline_warp_specialized(
            step,
            grid=(steps,),
            memory_registers=40,
            in_specs=[
                plgpu.BlockSpec(
                    (ROWS * wgs, COLS),
                    lambda t: (0, t),
                    transforms=(plgpu.TilingTransform((8, COLS)), plgpu.SwizzleTransform(128)),
                )
            ],
            wg_axis="wg",
            num_compute_wgs=wgs,
            max_concurrent_steps=2,
            compute_context=compute_context,
        )(x_gmem)

    return plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((ROWS * wgs, COLS), jnp.float32),
        num_threads=wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )(x)


def one_case(wgs: int, steps: int) -> str:
    """Runs one case in this process; a line saying whether it matched NumPy."""
    x = np.random.default_rng(0).integers(0, 4, (ROWS * wgs, COLS * steps), dtype=np.uint8)
    got = np.asarray(jax.jit(functools.partial(summed_rows, wgs=wgs, steps=steps))(x))
    want = x.reshape(ROWS * wgs, steps, COLS).sum(1, dtype=np.float32)
    return "ok" if np.array_equal(got, want) else f"WRONG (max diff {np.max(np.abs(got - want))})"


def main() -> None:
    if len(sys.argv) == 3:  # a child: one case
        print(one_case(int(sys.argv[1]), int(sys.argv[2])), flush=True)
        return
    for wgs in (2, 3, 4):
        for steps in (1, 8):
            t0 = time.perf_counter()
            try:
                case = [sys.executable, __file__, str(wgs), str(steps)]
                done = subprocess.run(case, capture_output=True, text=True, timeout=TIME_LIMIT_S)
                last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
                errors = [line for line in done.stderr.splitlines() if "Error" in line]
                result = last if done.returncode == 0 else f"FAILED {(errors or ['(no error line)'])[-1][:200]}"
            except subprocess.TimeoutExpired:
                result = f"HUNG (killed after {TIME_LIMIT_S} s)"
            print(f"compute warpgroups {wgs}, steps {steps}: {result} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
