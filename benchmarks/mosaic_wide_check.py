"""Check: does the 4-compute-warpgroup variant of the stream probe compile and finish at all?

``mosaic_stream_probe.py --wide`` printed nothing within 230 s on the H200 (2026-11-30), not
even its first variant. This script separates the stages, each printed as it finishes: lower
and compile (timed), one run at a small shape (checked against a float32 reference), then one
run and a loop timing at (14336, 4096), for ``wgs`` 4 and 2 (shipped), ``consumer="full"``; or
for the one variant given as ``consumer wgs memory_registers`` arguments (e.g. ``none 4 40``).
Its recorded runs (results/mosaic_wide_check*_h200.log) hung with 4 compute warpgroups at every
producer register count; mosaic_registers.py explains why (jax's register split asks more than a
5-warpgroup CTA is launched with), and ``mosaic_stream_probe.py --wide`` now runs these kernels
with a launch-aware split. Run it under ``timeout`` with ``MOSAIC_GPU_DUMP_PTXAS=1`` to see registers and spills:
``PYTHONPATH=. timeout 200 python3 benchmarks/mosaic_wide_check.py [consumer wgs memory_registers]``.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_decode_probe import operands  # noqa: E402
from mosaic_stream_probe import Stream, reference, run  # noqa: E402
from timing import failure, loop_time  # noqa: E402


def stage(label: str, f, *args):
    """Returns ``f(*args)`` (None if it raised), printing ``label`` and its wall time or failure."""
    t0 = time.perf_counter()
    try:
        out = f(*args)
    except Exception as e:  # noqa: BLE001 - a check reports every failure and goes on
        print(f"  {label}: FAILED {failure(e)}", flush=True)
        return None
    print(f"  {label}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main() -> None:
    num_sms = getattr(jax.devices()[0], "core_count", 132)  # used by the balanced schedule only
    if len(sys.argv) == 4:
        consumer, wgs, regs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        variants = [Stream(consumer=consumer, wgs=wgs, min_ctas=128, memory_registers=regs)]
    else:
        variants = [Stream(consumer="full", wgs=wgs, min_ctas=128) for wgs in (4, 2)]
    for v in variants:
        fn = jax.jit(functools.partial(run, v=v, num_sms=num_sms))
        print(f"== {v}", flush=True)
        for n, k, copies in ((2048, 1024, 1), (14336, 4096, 3)):
            sets = operands(n, k, 16, copies=copies)
            compiled = stage(f"N={n} K={k}: lower + compile", lambda f, a: f.lower(*a).compile(), fn, sets[0])
            if compiled is None:
                break
            out = stage(f"N={n} K={k}: one run", lambda f, a: np.asarray(f(*a).sum(0)), compiled, sets[0])
            if out is None:
                break
            if v.consumer == "none":  # nothing computed to check
                continue
            ref = np.asarray(reference(*sets[0]))
            print(f"  rel err {float(np.max(np.abs(out - ref)) / np.max(np.abs(ref))):.2e}", flush=True)
            if n == 14336:
                t = stage("loop_time", loop_time, fn, sets)
                if t is not None:
                    print(f"  {t * 1e6:.1f} us", flush=True)


if __name__ == "__main__":
    main()
