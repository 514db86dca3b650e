"""XLA compile options for jitted programs that call the MXFP8 GPU kernels inside a decode loop."""

from __future__ import annotations

DECODE_LOOP_COMPILER_OPTIONS: dict[str, str] = {
    "xla_disable_hlo_passes": "dynamic-slice-copy-fusion-async-wrapper",
}
"""``jax.jit(..., compiler_options=DECODE_LOOP_COMPILER_OPTIONS)`` for a decode loop (``lax.scan`` or ``fori_loop``
over steps) that writes a kernel's output into a KV cache at the step's index.

A custom call's output (the ``hopper`` and ``flashinfer`` kernels are custom calls) that feeds a
``dynamic_update_slice`` unchanged, such as the values written into a V cache, makes that update a bare copy, which
XLA (jaxlib 0.11) turns into an asynchronous copy on a second stream (``DynamicSliceCopyFusionAsyncWrapper``).
On an H200, in ``bench_llama.py``'s 4-block decode at batch 1, every run with that pass on took ~30 us a step longer
than every one with it off (MXFP8 0.396-0.402 ms a step in seven runs, 0.358-0.373 ms in seven; the kernels' own time
is the same; ``docs/benchmark_log.md``, "The slow mode's cause"). Per XLA's source, an asynchronous copy at a
loop-dependent offset makes the host update its command buffer every step. With the pass off the update stays an
ordinary in-place ``dynamic_update_slice``: the same numbers, computed in the same kernels but that one. Where the pass
does not exist (CPU, other XLA versions) the option does nothing. JAX takes compiler options only on the outermost
``jax.jit`` (a nested one raises ``ValueError``): pass them where the decode loop's program is compiled.
"""
