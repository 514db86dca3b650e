"""Every kernel of a Llama decode step, bf16 against MXFP8, as CUPTI records them (PyTorch's profiler).

``bench_llama.py`` times the decode step from outside (wall time of whole generations), and
``llama_step_budget.py`` times each projection alone; neither says what runs inside the step. This
script runs ``generate`` (``bench_llama.py``'s model: Llama-3-8B blocks, random weights) for ``SHORT``
and for ``LONG`` new tokens under ``torch.profiler`` (CUDA activity only: CUPTI records every kernel,
copy and memset on the device, JAX's included) and takes the difference, so prefill cancels and what
is left is ``LONG - SHORT`` decode steps. Per step it reports the span from the first activity's start
to the last one's end, the activities' summed time, the idle time between them (span - busy) and the
number of activities, then each kernel name's count and time per step, largest first, and the idle time per step
by the activity that ended it (where the GPU waited, and for what); and, for comparison, the
step's wall time measured as ``bench_llama.py`` measures it (unprofiled, same process). It also writes each
model's compiled ``generate`` (XLA's optimized HLO) to ``$OUT``.

Usage (device): ``PYTHONPATH=. python3 benchmarks/llama_step_profile.py [--layers 4] [--batch 1]
[--bf16-layout nk] [--fuse-projections [--fuse-norms]]``; JSON to ``$OUT/llama_step_profile.json``. ``--tiny`` runs
small dimensions (on CPU the profiler records no device activity: a smoke test of the script's plumbing only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llama import LONG, SHORT, block_config, build_model, decode_prompt, decode_step  # noqa: E402
from timing import environment, out_dir, write_json  # noqa: E402

from examples.llama import LlamaConfig, generate  # noqa: E402

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def device_activities(trace: dict) -> list[dict]:
    """``{"name", "ts", "dur"}`` (microseconds) of every device activity in a Chrome trace from
    ``torch.profiler``, in start order."""
    events = [
        {"name": e["name"], "ts": float(e["ts"]), "dur": float(e.get("dur", 0.0))}
        for e in trace.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES
    ]
    return sorted(events, key=lambda e: e["ts"])


def summarize(events: list[dict]) -> dict:
    """Span, busy time, count, per-name ``[count, time]`` of a run's device activities (in start order), and
    ``idle_before``: per name, the idle time (nothing running) that ended with an activity of that name starting."""
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    idle_before: dict[str, float] = defaultdict(float)
    end = events[0]["ts"] if events else 0.0
    for e in events:
        by_name[e["name"]][0] += 1
        by_name[e["name"]][1] += e["dur"]
        idle_before[e["name"]] += max(0.0, e["ts"] - end)
        end = max(end, e["ts"] + e["dur"])
    return {
        "span": end - events[0]["ts"] if events else 0.0,
        "busy": sum(e["dur"] for e in events),
        "count": len(events),
        "by_name": dict(by_name),
        "idle_before": dict(idle_before),
    }


def per_step(short: dict, long: dict, steps: int) -> dict:
    """The decode step from two runs' summaries: ``(long - short) / steps`` for every quantity."""
    names = set(short["by_name"]) | set(long["by_name"])
    kernels = {}
    for name in names:
        c0, t0 = short["by_name"].get(name, (0, 0.0))
        c1, t1 = long["by_name"].get(name, (0, 0.0))
        if (c1, t1) != (c0, t0):
            kernels[name] = {"count": (c1 - c0) / steps, "us": (t1 - t0) / steps}
    idle_before = {
        name: (long["idle_before"].get(name, 0.0) - short["idle_before"].get(name, 0.0)) / steps
        for name in set(short["idle_before"]) | set(long["idle_before"])
    }
    span = (long["span"] - short["span"]) / steps
    busy = (long["busy"] - short["busy"]) / steps
    return {
        "span_us": span,
        "busy_us": busy,
        "idle_us": span - busy,
        "activities": (long["count"] - short["count"]) / steps,
        "profiled_wall_us": (long["wall"] - short["wall"]) / steps,
        "kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us"])),
        "idle_before": dict(sorted(((k, v) for k, v in idle_before.items() if v), key=lambda kv: -kv[1])),
    }


def profiled_run(fn) -> dict:
    """``fn()`` once more after two warm runs, under the profiler: its wall time (us) and the :func:`summarize` of
    its device activities."""
    import torch  # the device image's; only CUPTI's records are used

    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
    activity = torch.profiler.ProfilerActivity
    with torch.profiler.profile(activities=[activity.CUDA if torch.cuda.is_available() else activity.CPU]) as prof:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        wall = (time.perf_counter() - start) * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            return {"wall": wall, **summarize(device_activities(json.load(f)))}


def decode_step_profile(cfg: LlamaConfig, params, prompt: jax.Array) -> dict:
    """The decode step of ``generate`` from ``prompt``: :func:`per_step` of its ``SHORT``- and ``LONG``-token runs."""
    runs = [profiled_run(lambda t=t: generate(cfg, params, prompt, max_new_tokens=t)) for t in (SHORT, LONG)]
    return per_step(*runs, steps=LONG - SHORT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--bf16-layout", default="nk", choices=("kn", "nk"), help="the bf16 model's weight layout")
    ap.add_argument("--fuse-projections", action="store_true", help="q/k/v and gate/up as one projection each")
    ap.add_argument("--fuse-norms", action="store_true", help="the MXFP8 model's norms inside its projections")
    ap.add_argument("--top", type=int, default=12, help="kernel names printed per model")
    ap.add_argument("--tiny", action="store_true", help="small dimensions (a smoke test of the script)")
    args = ap.parse_args()
    out = {"env": environment(), **vars(args), "rows": []}
    print(out["env"], flush=True)
    base = block_config(args.layers, args.tiny)
    prompt = decode_prompt(base["vocab_size"], args.batch)
    for quantized in (False, True):
        name = "mxfp8" if quantized else f"bf16_{args.bf16_layout}"
        cfg, params = build_model(
            base,
            quantized=quantized,
            bf16_layout=args.bf16_layout,
            fuse_projections=args.fuse_projections,
            fuse_norms=args.fuse_norms,
        )
        step = {"wall_us": decode_step(cfg, params, args.batch) * 1e6, **decode_step_profile(cfg, params, prompt)}
        hlo = generate.lower(cfg, params, prompt, max_new_tokens=SHORT).compile().as_text()
        (out_dir() / f"llama_step_{name}_b{args.batch}.hlo.txt").write_text(hlo)
        out["rows"].append({"model": name, **step})
        write_json("llama_step_profile.json", out)
        print(
            f"{name}: per step {step['wall_us']:.1f} us wall unprofiled (as bench_llama.py), "
            f"{step['profiled_wall_us']:.1f} us wall profiled, {step['span_us']:.1f} us span, "
            f"{step['busy_us']:.1f} us busy, {step['idle_us']:.1f} us idle, {step['activities']:.1f} activities",
            flush=True,
        )
        for kernel, k in list(step["kernels"].items())[: args.top]:
            print(f"  {k['us']:8.1f} us {k['count']:5.1f}x  {kernel[:110]}", flush=True)
        for kernel, idle in list(step["idle_before"].items())[: args.top]:
            print(f"  {idle:8.1f} us idle before {kernel[:100]}", flush=True)
        del params


if __name__ == "__main__":
    main()
