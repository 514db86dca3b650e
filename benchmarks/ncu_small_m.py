"""Driver for Nsight Compute: each small-M GEMM of interest runs once inside a profiler range.

Run under ``ncu --profile-from-start off`` (the range is ``cudaProfilerStart/Stop``, through CuPy),
with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (else ncu saves and restores JAX's whole memory pool
around every replayed kernel, and on the H200 failed at the fifth):

    XLA_PYTHON_CLIENT_PREALLOCATE=false ncu --clock-control none --profile-from-start off \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \\
        --section MemoryWorkloadAnalysis --section LaunchStats \\
        python3 benchmarks/ncu_small_m.py [--start S] [--cases N] [--decodes D,..]

Profiled, in this order (printed before the range starts, so the report's kernels can be matched
to them): at (14336, 4096) M = 1 and 16 and at (4096, 14336) M = 1, bf16 ``jnp.dot``, the shipped
``hopper`` backend end to end, and the probe kernel of ``cuda_small_m.cu`` alone (tiled weight,
4 warps, 4 blocks a round, no K split) as ``tload`` (weight loads only), ``tnone`` (no decode) and
``tcvt`` (exact), or the variants ``--decodes`` names (e.g. ``tcvtp``, registers double-buffered,
and ``tcvta4``, the cp.async ring: the two designs meant to keep loads in flight, not yet profiled).
Everything is compiled and run once before the range, so only the timed kernels are profiled.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_small_m_probe as probe  # noqa: E402
from mosaic_sweep import dequant_bf16, operands  # noqa: E402

from mxfp8_xla import quantize  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402

CASES = (((14336, 4096), 1), ((14336, 4096), 16), ((4096, 14336), 1))
PROBE_DECODES = ("tload", "tnone", "tcvt")


def ops(cases: int, start: int = 0, decodes: tuple[str, ...] = PROBE_DECODES) -> list[tuple[str, object, tuple]]:
    """(label, jitted function, arguments) for every profiled op of ``cases`` cases from ``start`` on, the probe
    kernel as each of ``decodes`` (instantiated at 4 warps and 4 blocks a round)."""
    out = []
    for (n, k), m in CASES[start : start + cases]:
        x, w = operands(n, k, m, copies=1)[0]
        wb = dequant_bf16(w)
        out.append((f"({n}, {k}) M={m} bf16 jnp.dot", jax.jit(lambda x, wb: jnp.dot(x, wb.T)), (x, wb)))
        out.append((f"({n}, {k}) M={m} hopper", jax.jit(lambda x, w: hopper.matmul(x, w, jnp.bfloat16)), (x, w)))
        for decode in decodes:
            x_op, x_scale = probe.kernel_inputs(quantize(x), decode)
            fn = functools.partial(probe.run_kernel, m=m, decode=decode, warps=4, unroll=4, split=1)
            out.append((f"({n}, {k}) M={m} probe {decode}", jax.jit(fn), (x_op, x_scale, probe.for_decode(w, decode))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=len(CASES), help="profile only this many cases")
    parser.add_argument("--start", type=int, default=0, help="from this case on (0-based)")
    parser.add_argument(
        "--decodes", default=",".join(PROBE_DECODES), help="probe kernel variants, e.g. tcvt,tcvtp,tcvta4"
    )
    args = parser.parse_args()
    probe.PTX = probe.compile_ptx()
    profile_once(ops(args.cases, args.start, tuple(args.decodes.split(","))))


def profile_once(todo: list[tuple[str, object, tuple]]) -> None:
    """Run each ``(label, fn, args)`` once to compile and warm it up, print the labels in order, then run each once
    more inside the profiler range (``cudaProfilerStart/Stop``, through CuPy)."""
    for _, fn, operands_ in todo:  # compile and warm up outside the range
        jax.block_until_ready(fn(*operands_))
    print("profiled, in order:", flush=True)
    for i, (label, _, _) in enumerate(todo):
        print(f"  {i}: {label}", flush=True)
    import cupy  # the device image has it; only the profiler range needs it

    cupy.cuda.runtime.profilerStart()
    for _, fn, operands_ in todo:
        jax.block_until_ready(fn(*operands_))
    cupy.cuda.runtime.profilerStop()


if __name__ == "__main__":
    main()
