"""Probe: where a compute warpgroup's pipeline step spends its time, by Mosaic GPU's in-kernel profiler.

On the H200 the small-M Mosaic kernel takes ~1.2 us per pipeline step while its TMA stream
alone needs ~0.75 (docs/benchmark_log.md, "What caps the Mosaic kernel"). This runs the stream
probe's kernel (``mosaic_stream_probe.run``, M = 16) with ``CompilerParams(profile_space=...)``:
every warpgroup records the SM clock (cycles) on entry to and exit from the step's named
scopes: ``step`` (the whole body) and, inside it, ``scales`` (issuing the next step's scale
loads), ``tile`` (the ``[64, tile_k]`` fp8 tile from shared memory into registers),
``decode_mma`` (decode and the wgmma issues) and ``mma_wait`` (``wgmma_wait``). Between two
``step`` scopes (``gap``) the warpgroup is in the pipeline: it releases the stage and waits for
the next one. The profiled variants: the step with ``scales="factors"`` (shipped until
2026-11-30), the shipped step (``scales="bytes"``) and 8 stages.

Also timed, profiler off (``timing.loop_time``), each output checked against a float32
reference: ``scales="factors"``, the shipped step, and ``CompilerParams(unsafe_no_auto_barriers=True)``.

The first H200 run (results/mosaic_profile_h200.*) found ``scales`` at 31-44% of the step
(561 of 1,327 cycles at (14336, 4096)): the step then turned the next step's scale bytes into
float32 factors right after loading them, so it waited out a global-memory load every step.
``scales="bytes"`` carries the raw bytes into the next step and builds the factors there, so
the load has a whole step to land. The second (results/mosaic_profile_scales_h200.*) found it
faster end to end (35.9 against 40.6 us, 29.4 against 31.6 us) though its profiled step is
longer (1,642 against 1,326 cycles): the profiler's own stores move with the scopes.

Run on the device: ``PYTHONPATH=. python3 benchmarks/mosaic_profile.py``; prints a table of
median cycles per scope and writes $OUT/mosaic_profile.json and the shipped step's raw
Perfetto trace at (14336, 4096), gzipped, to $OUT/mosaic_profile_trace.json.gz.
"""

from __future__ import annotations

import functools
import glob
import gzip
import json
import os
import shutil
import sys
import tempfile
from collections import defaultdict

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_decode_probe import operands  # noqa: E402
from mosaic_stream_probe import Stream, reference, run  # noqa: E402
from timing import environment, failure, loop_time, out_dir, rotation_copies, write_json  # noqa: E402

SCOPES = ("step", "scales", "tile", "decode_mma", "mma_wait")
AT_LOAD = Stream(consumer="full", scales="factors")  # the step shipped until 2026-11-30
PROFILED = [AT_LOAD, Stream(consumer="full"), Stream(consumer="full", stages=8)]
TIMED = [AT_LOAD, Stream(consumer="full"), Stream(consumer="full", auto_barriers=False)]


def summarize(trace: dict) -> dict:
    """Median cycles of each scope, of the ``gap`` between steps and of the step ``period``.

    ``trace`` is the profiler's Perfetto JSON: per warpgroup (``tid``) nested ``B``/``E``
    events whose ``ts`` is in thousands of SM cycles from that warpgroup's start.
    """
    by_tid = defaultdict(list)
    for e in trace["traceEvents"]:
        by_tid[e["tid"]].append(e)
    cycles = defaultdict(list)
    for events in by_tid.values():
        open_at, steps = [], []
        for e in events:
            if e["ph"] == "B":
                open_at.append((e["name"], e["ts"]))
                continue
            name, start = open_at.pop()
            if name != e["name"]:
                raise ValueError(f"profile trace: scope {e['name']!r} ends inside {name!r}")
            cycles[name].append((e["ts"] - start) * 1e3)
            if name == "step":
                steps.append((start, e["ts"]))
        for (b0, e0), (b1, _) in zip(steps, steps[1:], strict=False):
            cycles["gap"].append((b1 - e0) * 1e3)
            cycles["period"].append((b1 - b0) * 1e3)
    return {
        name: {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90))}
        for name, v in cycles.items()
        if v
    } | {"warpgroups": len(by_tid)}


def cells(summary: dict) -> str:
    """One line of :func:`summarize`'s medians and 10th-90th percentiles, scope by scope."""
    return "  ".join(
        f"{s} {summary[s]['median']:.0f} [{summary[s]['p10']:.0f}, {summary[s]['p90']:.0f}]"
        for s in (*SCOPES, "gap", "period")
        if s in summary
    )


def profile(fn, args, keep_as: str | None) -> dict:
    """Runs ``fn`` (compiled with a profile directory) twice; the summary of the second run's trace."""
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(2):
            jax.block_until_ready(fn(tmp)(*args))
        jax.effects_barrier()  # the trace is written by a host callback
        newest = max(glob.glob(os.path.join(tmp, "*-trace.json")), key=os.path.getmtime)
        with open(newest) as f:
            trace = json.load(f)
        if keep_as:
            with open(newest, "rb") as src, gzip.open(out_dir() / keep_as, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return summarize(trace)


def main() -> None:
    env = environment()
    num_sms = jax.devices()[0].core_count
    print(env, flush=True)
    rows = []
    for n, k in ((14336, 4096), (4096, 14336)):
        sets = operands(n, k, 16, copies=rotation_copies(n * k, least=3))
        print(f"== N={n} K={k}, M=16 (cycles: median [p10, p90])", flush=True)
        for v in PROFILED:
            label = dict(n=n, k=k, variant=repr(v))
            keep = "mosaic_profile_trace.json.gz" if (n, k) == (14336, 4096) and v == PROFILED[0] else None
            try:
                summary = profile(
                    lambda d, v=v: jax.jit(functools.partial(run, v=v, num_sms=num_sms, profile_dir=d)), sets[0], keep
                )
            except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
                print(f"  {v}: FAILED {failure(e)}", flush=True)
                rows.append(dict(label, error=failure(e)))
                continue
            print(f"  {v}: {summary['warpgroups']} warpgroups; {cells(summary)}", flush=True)
            rows.append(dict(label, profile=summary))
        ref = np.asarray(reference(*sets[0]))
        for v in TIMED:
            label = dict(n=n, k=k, variant=repr(v))
            try:
                fn = functools.partial(run, v=v, num_sms=num_sms)
                out = np.asarray(jax.jit(fn)(*sets[0]).sum(0))
                err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
                t = loop_time(fn, sets)
            except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
                print(f"  {v}: FAILED {failure(e)}", flush=True)
                rows.append(dict(label, error=failure(e)))
                continue
            print(f"  {v}: {t * 1e6:.1f} us (profiler off), rel err {err:.1e}", flush=True)
            rows.append(dict(label, us=t * 1e6, rel_err=err))
        write_json("mosaic_profile.json", dict(environment=env, rows=rows))


if __name__ == "__main__":
    main()
