"""Register hand-over of jax's warp-specialized pipeline, and a launch-aware replacement for probes.

``plgpu.emit_pipeline_warp_specialized`` lowers the producer warpgroup to ``memory_registers``
a thread (``setmaxnreg.dec``) and raises every compute warpgroup to
``pipeline._compute_registers(memory_registers, num_compute_wgs)`` (``setmaxnreg.inc``), which
splits a 65,536-register file as if the CTA owned all of it: ``(512 - memory_registers) /
num_compute_wgs``, rounded down to 8. But ``setmaxnreg.inc`` draws only on the CTA's own pool,
which holds what the CTA was launched with (threads x the per-thread count ptxas compiled for,
a multiple of 8) plus what other warpgroups released; it blocks until enough is there (PTX ISA,
``setmaxnreg``). With 4 compute warpgroups the 640 threads launch at 96 registers (61,440 in
all); the producer's drop to 40 frees 7,168 and the compute warpgroups ask 8,192 more for 112:
the last one waits forever. With 2 or 3 compute warpgroups the rounding loses nothing, so the
two formulas agree (:func:`within_launch`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from jax._src.pallas.mosaic_gpu import pipeline

REGISTER_FILE = 65536  # 32-bit registers per SM on Hopper
WARPGROUP = 128  # threads


def launch_registers(warpgroups: int) -> int:
    """Per-thread registers a CTA of ``warpgroups`` warpgroups launches with: its share of the file.

    Rounded down to the allocation unit of 8, at most 256 (255 usable, allocated as 256).
    """
    return min(REGISTER_FILE // (WARPGROUP * warpgroups), 256) // 8 * 8


def within_launch(memory_registers: int, num_compute_wgs: int) -> int:
    """Compute warpgroups' registers that the CTA's launch allocation can actually supply."""
    total = launch_registers(num_compute_wgs + 1) * (num_compute_wgs + 1)
    return min(256, (total - memory_registers) // num_compute_wgs) // 8 * 8


def shortfall(memory_registers: int, num_compute_wgs: int, compute_registers: int) -> int:
    """Registers the compute warpgroups' ``setmaxnreg.inc`` asks beyond the CTA's pool; > 0 means it hangs."""
    launch = launch_registers(num_compute_wgs + 1)
    return WARPGROUP * (num_compute_wgs * (compute_registers - launch) - (launch - memory_registers))


@contextlib.contextmanager
def launch_aware_registers() -> Iterator[None]:
    """While tracing, jax's pipeline raises compute warpgroups only to :func:`within_launch`."""
    original = pipeline._compute_registers
    pipeline._compute_registers = within_launch
    try:
        yield
    finally:
        pipeline._compute_registers = original
