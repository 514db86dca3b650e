"""benchmarks/mosaic_config_probe.py on CPU: the configs it times, and the row it and mosaic_spill_probe.py record."""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import jax.numpy as jnp  # noqa: E402
import mosaic_config_probe as probe  # noqa: E402
import numpy as np  # noqa: E402
from mosaic_sweep import timed_check  # noqa: E402

from mxfp8_xla.backends import hopper  # noqa: E402


def test_the_routes_config_comes_first_and_every_candidate_can_run():
    for n, k in probe.SHAPES:
        for m in (64, 128, 256):
            cands = probe.candidates(m, n, k)
            assert cands[0] == hopper.mosaic_config(m, n, k) and len(set(cands)) == len(cands)
            assert cands[1] == dataclasses.replace(cands[0], block_loads=not cands[0].block_loads)
            assert all(cfg.check(m, n, k) is None for cfg in cands)
    # (2, 2, 1) is the route's there, in one of its two weight loads: CONFIGS and the other
    assert len(probe.candidates(256, 14336, 4096)) == len(probe.CONFIGS) + 1


def test_timed_check_times_checks_and_reports_failures():
    """The probes' shared row: a time and the error against the reference, ``ok`` within the tolerance; a kernel
    that fails gives ``error`` and no time."""
    sets = [(jnp.ones((4, 4)),), (jnp.full((4, 4), 2.0),)]
    want = np.full((4, 4), 2.0)
    good = timed_check(lambda a: a * 2, sets, want, 1e-6)
    assert good["ok"] and good["rel_err"] == 0.0 and good["us"] > 0
    off = timed_check(lambda a: a * 3, sets, want, 1e-6)
    assert not off["ok"] and off["rel_err"] == 0.5

    def broken(a):
        raise RuntimeError("no kernel here")

    assert timed_check(broken, sets, want, 1e-6) == {"error": "RuntimeError: no kernel here"}
