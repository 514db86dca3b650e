"""benchmarks/mosaic_registers.py: the register hand-over of jax's warp-specialized pipeline.

The H200 runs it must explain (results/mosaic_wgs_repro_h200.log, mosaic_wide_check*_h200.log,
mosaic_wgs_repro_predicted_h200.log): 2 and 3 compute warpgroups finished with the producer at 40
registers; 4 hung with the producer at 40, 72 and 96, and 2 with the producer at 96; 4 with the
launch-aware split finished with the producer at 40 and 72.
"""

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax._src.pallas.mosaic_gpu import pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mosaic_registers  # noqa: E402
import mosaic_wgs_repro  # noqa: E402


@pytest.mark.parametrize(("warpgroups", "registers"), [(2, 256), (3, 168), (4, 128), (5, 96), (6, 80)])
def test_launch_registers_are_the_register_file_shared_out_in_multiples_of_8(warpgroups, registers):
    assert mosaic_registers.launch_registers(warpgroups) == registers


H200_RUNS = [(2, 40, False), (3, 40, False), (4, 40, True), (4, 72, True), (4, 96, True), (2, 96, True)]


@pytest.mark.parametrize(("compute_wgs", "memory_registers", "hung"), H200_RUNS)
def test_jax_register_split_explains_the_h200_runs(compute_wgs, memory_registers, hung):
    compute = pipeline._compute_registers(memory_registers, compute_wgs)
    assert (mosaic_registers.shortfall(memory_registers, compute_wgs, compute) > 0) == hung


@pytest.mark.parametrize("compute_wgs", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("memory_registers", [24, 40, 56, 72])  # 4 at 40 and 72 finished on the H200
def test_launch_aware_split_never_asks_more_than_the_launch_gave(compute_wgs, memory_registers):
    compute = mosaic_registers.within_launch(memory_registers, compute_wgs)
    assert compute % 8 == 0 and compute <= 256
    assert compute >= mosaic_registers.launch_registers(compute_wgs + 1)  # an increase, never a decrease
    assert mosaic_registers.shortfall(memory_registers, compute_wgs, compute) <= 0


def test_launch_aware_registers_replace_jax_split_while_tracing(monkeypatch):
    """The pipeline looks the split up by module global at trace time, so the patch reaches it."""
    seen = []
    monkeypatch.setattr(mosaic_registers, "within_launch", lambda m, w: seen.append((m, w)) or 104)
    kernel = jax.jit(functools.partial(mosaic_wgs_repro.summed_rows, wgs=4, steps=2))
    with mosaic_registers.launch_aware_registers():
        kernel.trace(jax.ShapeDtypeStruct((256, 256), jnp.uint8)).lower(lowering_platforms=("cuda",))
    assert seen == [(40, 4)]
    assert pipeline._compute_registers(40, 4) == 112  # jax's own again
