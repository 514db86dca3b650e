"""benchmarks/mosaic_config_probe.py on CPU: the configs it times."""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import mosaic_config_probe as probe  # noqa: E402

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
