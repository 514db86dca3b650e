"""Driver for Nsight Compute: the GEMV kernels of ``gemv.cu`` at (14336, 4096), each run once inside a profiler range.

The question it answers: what bounds the weight stream of each kernel (docs/benchmarks.md, "Shared memory and the
tensor-core GEMV's stream": the kernels' speeds line up with the weight bytes each SM keeps in flight, 64 KB for the
one-row kernel and 32 KB for the two-row and tensor-core ones, but not every variant fits that reading). The profile
gives each kernel's DRAM throughput, achieved warps, and why warps stall (long scoreboard: waiting on a load; barrier:
waiting on the CTA's other warps). Run on the device with ``benchmarks/ncu_gemv.sh`` (the ncu command line; the report
goes straight to a file, since a pipe cut by the time limit loses it).

Profiled, in this order (printed before the range starts, so the report's kernels can be matched to them): bf16
``jnp.dot`` and the library's route (``hopper.matmul``) at 1, 2 and 8 rows, the probe's two-row kernels
(``cuda_gemv_probe.ROW_CONFIGS``, one nvcc build: units of 4 and of 8 weight rows, and units of 4 two units ahead), and
at (4096, 14336) one row, bf16 and the library (896 threads, one CTA an SM); at one row, also the probe's one-row kernel
two units ahead where one of its configurations fits the shape. Everything is compiled and run once before the range.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_gemv_probe as probe  # noqa: E402
from mosaic_sweep import dequant_bf16, operands  # noqa: E402
from ncu_small_m import profile_once  # noqa: E402

from mxfp8_xla.backends import hopper  # noqa: E402

WIDE = (14336, 4096)
DEEP = (4096, 14336)


def ops(wide: tuple[int, int] = WIDE, deep: tuple[int, int] = DEEP) -> list[tuple[str, Callable, tuple]]:
    """(label, jitted function, arguments) for every profiled op, in the order they run."""
    bf16_dot = jax.jit(lambda x, wb: jnp.dot(x, wb.T))
    library = jax.jit(lambda x, w: hopper.matmul(x, w, jnp.bfloat16))
    out = []
    for (n, k), ms in ((wide, (1, 2, 8)), (deep, (1,))):
        for m in ms:
            x, w = operands(n, k, m, copies=1)[0]
            out.append((f"({n}, {k}) M={m} bf16 jnp.dot", bf16_dot, (x, dequant_bf16(w))))
            out.append((f"({n}, {k}) M={m} library", library, (x, w)))
            ahead = [c for c in probe.CONFIGS if isinstance(c, probe.Split) and c.ahead == 2 and probe.fits(c, n, k)]
            probes = ahead if m == 1 else probe.ROW_CONFIGS[2] if m == 2 else ()  # ahead: one row, two units ahead
            for cfg in probes:
                fn = jax.jit(functools.partial(probe.gemv, cfg=cfg))
                out.append((f"({n}, {k}) M={m} probe {probe.label_of(cfg)}", fn, (x, w)))
    return out


def main() -> None:
    probe.PTX = probe.compile_ptx()
    profile_once(ops())


if __name__ == "__main__":
    main()
