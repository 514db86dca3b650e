"""benchmarks/quantize_tile_probe.py on CPU (Pallas interpret mode): the tiles it times, and a row it records."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import quantize_tile_probe as probe  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper, pallas_quantize  # noqa: E402


def test_the_shipped_tile_comes_first_once():
    grid = probe.tiles([16, 32, 64], [256, 512], [2, 4, 8])
    assert grid[0] == probe.SHIPPED and len(grid) == len(set(grid)) == 18
    assert probe.tiles([16], [512], [8])[0] == probe.SHIPPED  # timed even outside the grid


def test_shipped_matches_the_backend(monkeypatch):
    """The probe's baseline is the tile hopper.quantize_activations runs above 16 rows."""
    seen = []

    def record(x, bm=32, bk=128, num_warps=4, tile=False, interpret=False):
        seen.append((bm, bk, num_warps, tile))
        return mx.quantize(x)

    monkeypatch.setattr(pallas_quantize, "quantize_2d", record)
    hopper.quantize_activations(jnp.ones((64, 4096), jnp.bfloat16))
    assert seen == [(*probe.SHIPPED, True)]


def test_a_tile_row_is_timed_and_bit_exact():
    xs = [(jax.random.normal(jax.random.key(i), (32, 256), jnp.bfloat16) * 3,) for i in range(2)]
    row = probe.time_tile(xs, mx.quantize(xs[0][0]), (16, 256, 4), interpret=True)
    assert row["bit_exact"] and row["seconds"] > 0 and (row["bm"], row["bk"], row["num_warps"]) == (16, 256, 4)
    bad = probe.time_tile(xs, mx.quantize(xs[0][0]), (16, 96, 4), interpret=True)  # K = 256 is no multiple of 96
    assert "K=256 must be a multiple of bk=96" in bad["error"]
