"""Minimal check: when does ``plgpu.emit_pipeline_warp_specialized`` finish, and is it the registers?

The stream probe's kernel hung on the H200 with 4 compute warpgroups, even with the compute
warpgroups idle (docs/benchmark_log.md, "What caps the Mosaic kernel"). This kernel has nothing
of ours in it: one CTA streams ``steps`` tiles of ``[64 * wgs, 128]`` bytes through the
warp-specialized pipeline, and each compute warpgroup adds its 64 rows of every tile into a
float32 accumulator and writes it out. Each case runs in its own process under a time limit,
so a hang is reported and the next case still runs.

The first run (H200, 2026-11-30, results/mosaic_wgs_repro_h200.log) finished with 2 and 3
compute warpgroups and hung with 4. ``mosaic_registers`` explains that by the register
hand-over; each case prints what that explanation predicts, including two cases not run
before: 2 warpgroups with the producer keeping 96 registers (predicted to hang) and 4 with
launch-aware compute registers (predicted to finish). The second run
(results/mosaic_wgs_repro_predicted_h200.log) came out as predicted in all seven cases.

Run on the device: ``PYTHONPATH=. python3 benchmarks/mosaic_wgs_repro.py``; prints one line per
case (Warpgroup lowering semantics, as the backend's kernel): ``ok`` with the result checked
against NumPy, ``FAILED`` with the error, or ``HUNG``, and the prediction.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jax._src.pallas.mosaic_gpu import pipeline  # noqa: E402
from mosaic_registers import launch_aware_registers, shortfall, within_launch  # noqa: E402

ROWS = 64  # rows per compute warpgroup
COLS = 128  # bytes per row: one 128-byte swizzle width of uint8
TIME_LIMIT_S = 30
# (compute warpgroups, steps, producer registers, compute registers: jax's own or launch-aware)
CASES = [(2, 8, 40, "jax"), (3, 8, 40, "jax"), (4, 8, 40, "jax"), (2, 8, 96, "jax")]
CASES += [(4, 1, 40, "launch"), (4, 8, 40, "launch"), (4, 8, 72, "launch")]


def predicted(wgs: int, memory_registers: int, registers: str) -> str:
    """What the register hand-over predicts for a case: hangs, or finishes."""
    formula = within_launch if registers == "launch" else pipeline._compute_registers
    compute = formula(memory_registers, wgs)
    missing = shortfall(memory_registers, wgs, compute)
    return f"compute {compute} registers: " + (f"hangs ({missing} short)" if missing > 0 else "finishes")


def summed_rows(x: jax.Array, wgs: int, steps: int, memory_registers: int = 40) -> jax.Array:
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
            memory_registers=memory_registers,
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


def one_case(wgs: int, steps: int, memory_registers: int, registers: str) -> str:
    """Runs one case in this process; a line saying whether it matched NumPy."""
    x = np.random.default_rng(0).integers(0, 4, (ROWS * wgs, COLS * steps), dtype=np.uint8)
    fn = jax.jit(functools.partial(summed_rows, wgs=wgs, steps=steps, memory_registers=memory_registers))
    with launch_aware_registers() if registers == "launch" else contextlib.nullcontext():
        got = np.asarray(fn(x))
    want = x.reshape(ROWS * wgs, steps, COLS).sum(1, dtype=np.float32)
    return "ok" if np.array_equal(got, want) else f"WRONG (max diff {np.max(np.abs(got - want))})"


def main() -> None:
    if len(sys.argv) == 5:  # a child: one case
        print(one_case(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]), flush=True)
        return
    for wgs, steps, memory_registers, registers in CASES:
        t0 = time.perf_counter()
        try:
            case = [sys.executable, __file__, str(wgs), str(steps), str(memory_registers), registers]
            done = subprocess.run(case, capture_output=True, text=True, timeout=TIME_LIMIT_S)
            last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
            errors = [line for line in done.stderr.splitlines() if "Error" in line]
            result = last if done.returncode == 0 else f"FAILED {(errors or ['(no error line)'])[-1][:200]}"
        except subprocess.TimeoutExpired:
            result = f"HUNG (killed after {TIME_LIMIT_S} s)"
        print(
            f"compute warpgroups {wgs}, steps {steps}, producer {memory_registers} registers, {registers} split: "
            f"{result} ({time.perf_counter() - t0:.0f} s); predicted: {predicted(wgs, memory_registers, registers)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
