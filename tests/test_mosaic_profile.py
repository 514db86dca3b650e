"""benchmarks/mosaic_profile.py's reading of a Mosaic GPU profiler trace (the GPU run is the probe's)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mosaic_fp8_probe  # noqa: E402
import mosaic_profile  # noqa: E402
import mosaic_stream_probe  # noqa: E402

from mxfp8_xla import MXArray  # noqa: E402


def scope(name, tid, begin, end):
    """One profiled range in the profiler's units: ``ts`` in thousands of cycles."""
    return [{"name": name, "ph": ph, "ts": ts / 1e3, "tid": tid} for ph, ts in (("B", begin), ("E", end))]


def step(tid, begin, tile, decode, wait):
    """A ``step`` range holding ``tile``, ``decode_mma`` and ``mma_wait`` ranges of the given lengths."""
    inner = scope("tile", tid, begin, begin + tile)
    inner += scope("decode_mma", tid, begin + tile, begin + tile + decode)
    inner += scope("mma_wait", tid, begin + tile + decode, begin + tile + decode + wait)
    outer = scope("step", tid, begin, begin + tile + decode + wait)
    return [outer[0], *inner, outer[1]]


def test_summarize_medians_per_scope_gap_and_period():
    # warpgroup 1: steps of 100 + 300 + 50 cycles every 1000 cycles (gap 550);
    # warpgroup 2: the same with 150-cycle tile loads, every 1100 cycles (gap 600)
    events = [e for t in range(3) for e in step(1, 1000 * t, 100, 300, 50)]
    events += [e for t in range(3) for e in step(2, 1100 * t, 150, 300, 50)]
    got = mosaic_profile.summarize({"traceEvents": events})
    assert got["warpgroups"] == 2
    assert got["decode_mma"]["median"] == pytest.approx(300)
    assert got["mma_wait"]["median"] == pytest.approx(50)
    assert got["tile"]["median"] == pytest.approx(125)  # three 100s and three 150s
    assert got["step"]["median"] == pytest.approx(475)
    assert got["gap"]["median"] == pytest.approx(575)  # 550, 550, 600, 600
    assert got["period"]["median"] == pytest.approx(1050)
    assert got["tile"]["p10"] == pytest.approx(100) and got["tile"]["p90"] == pytest.approx(150)


def test_summarize_refuses_crossed_scopes():
    events = [
        {"name": "step", "ph": "B", "ts": 0.0, "tid": 1},
        {"name": "tile", "ph": "B", "ts": 0.1, "tid": 1},
        {"name": "step", "ph": "E", "ts": 0.2, "tid": 1},
    ]
    with pytest.raises(ValueError, match="'step' ends inside 'tile'"):
        mosaic_profile.summarize({"traceEvents": events})


PROBE_VARIANTS = mosaic_profile.PROFILED + mosaic_profile.TIMED + mosaic_stream_probe.WIDE + mosaic_stream_probe.DECODE


@pytest.mark.parametrize("variant", PROBE_VARIANTS, ids=repr)
def test_probe_variants_lower_for_an_sm90_gpu(variant):
    """Every variant the profile script and ``mosaic_stream_probe.py --wide/--decode`` run lowers on CPU.

    Without the profiler: its trace is written by a host callback that lowers only for a GPU backend.
    """
    n, k, m = 256, 1024, 16
    args = (
        jax.ShapeDtypeStruct((n, k), jnp.float8_e4m3fn),
        jax.ShapeDtypeStruct((n, k // 32), jnp.uint8),
        jax.ShapeDtypeStruct((m, k), jnp.bfloat16),
    )
    fn = jax.jit(lambda w, s, x: mosaic_stream_probe.run(w, s, x, variant, num_sms=132, profile_dir=None))
    assert "mosaic_gpu" in fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_decode_check_reads_each_decoded_element_through_one_hot_rows(monkeypatch):
    """The probe's bit-for-bit decode check passes a kernel computing the exact product, and catches one flip."""

    def exact_run(w, s, x, v, num_sms):
        codes = np.asarray(w).astype(np.float64)
        factors = np.repeat(2.0 ** (np.asarray(s).astype(np.float64) - 127), 32, axis=1)
        w_bf16 = (codes * factors).astype(ml_dtypes.bfloat16).astype(np.float64)
        out = np.asarray(x).astype(np.float64) @ w_bf16.T
        return jnp.asarray(out[None].astype(np.float32)) if not flip else jnp.asarray(out[None] * (1 + 2**-8))

    variant = mosaic_stream_probe.DECODE[0]
    monkeypatch.setattr(mosaic_stream_probe, "run", exact_run)
    flip = False
    result = mosaic_stream_probe.decode_check(variant, num_sms=132)
    assert result["mismatches"] == 0 and result["elements"] == 16 * 512
    flip = True
    assert mosaic_stream_probe.decode_check(variant, num_sms=132)["mismatches"] > 0


@pytest.mark.parametrize("variant", mosaic_fp8_probe.VARIANTS, ids=repr)
def test_fp8_probe_variants_lower_for_an_sm90_gpu(variant):
    """``mosaic_fp8_probe.py``'s fp8-wgmma kernel lowers on CPU, rows padded to 8 as its ``matmul`` pads them."""
    n, k, m = 256, 1024, 8
    mx_struct = lambda rows: MXArray(  # noqa: E731
        jax.ShapeDtypeStruct((rows, k), jnp.float8_e4m3fn), jax.ShapeDtypeStruct((rows, k // 32), jnp.uint8)
    )
    fn = jax.jit(lambda xq, w: mosaic_fp8_probe.run(xq, w, variant))
    assert "mosaic_gpu" in fn.trace(mx_struct(m), mx_struct(n)).lower(lowering_platforms=("cuda",)).as_text()
