"""benchmarks/llama_step_profile.py's trace parsing and step arithmetic (the profiles run on the GPU)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import llama_step_profile as sp  # noqa: E402


def _trace(*events):
    return {
        "traceEvents": [{"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur} for cat, name, ts, dur in events]
    }


def test_device_activities_keeps_kernels_copies_and_memsets_in_start_order():
    trace = _trace(
        ("kernel", "b", 20.0, 5.0),
        ("cpu_op", "host", 0.0, 100.0),
        ("gpu_memcpy", "copy", 10.0, 1.0),
        ("gpu_memset", "set", 30.0, 2.0),
    )
    trace["traceEvents"].append({"ph": "i", "cat": "kernel", "name": "marker", "ts": 1.0})
    assert [e["name"] for e in sp.device_activities(trace)] == ["copy", "b", "set"]


def test_summarize_counts_busy_time_and_the_span():
    events = sp.device_activities(
        _trace(("kernel", "a", 0.0, 4.0), ("kernel", "a", 10.0, 4.0), ("kernel", "b", 20.0, 1.0))
    )
    s = sp.summarize(events)
    assert s["span"] == 21.0 and s["busy"] == 9.0 and s["count"] == 3
    assert s["by_name"] == {"a": [2, 8.0], "b": [1, 1.0]}
    assert s["idle_before"] == {"a": 6.0, "b": 6.0}


def test_idle_before_counts_only_time_when_nothing_runs():
    # "long" covers 0-10; "inner" starts inside it; "late" starts 3 us after "long" ends
    events = sp.device_activities(
        _trace(("kernel", "long", 0.0, 10.0), ("kernel", "inner", 2.0, 1.0), ("kernel", "late", 13.0, 1.0))
    )
    s = sp.summarize(events)
    assert s["idle_before"] == {"long": 0.0, "inner": 0.0, "late": 3.0}
    assert s["span"] == 14.0 and s["busy"] == 12.0


def test_summarize_of_no_activity_is_empty():
    assert sp.summarize([]) == {"span": 0.0, "busy": 0.0, "count": 0, "by_name": {}, "idle_before": {}}


def test_per_step_is_the_difference_of_two_runs_over_the_steps():
    short = {
        "wall": 120.0,
        "span": 100.0,
        "busy": 60.0,
        "count": 10,
        "by_name": {"gemv": [4, 40.0], "pre": [6, 20.0]},
        "idle_before": {"gemv": 8.0, "pre": 2.0},
    }
    long = {
        "wall": 400.0,
        "span": 300.0,
        "busy": 220.0,
        "count": 30,
        "by_name": {"gemv": [20, 200.0], "pre": [6, 20.0], "x": [4, 0.0]},
        "idle_before": {"gemv": 40.0, "pre": 2.0, "x": 4.0},
    }
    step = sp.per_step(short, long, steps=4)
    assert step["span_us"] == 50.0 and step["busy_us"] == 40.0 and step["idle_us"] == 10.0
    assert step["activities"] == 5.0 and step["profiled_wall_us"] == 70.0
    assert step["kernels"] == {"gemv": {"count": 4.0, "us": 40.0}, "x": {"count": 1.0, "us": 0.0}}
    assert list(step["kernels"]) == ["gemv", "x"]
    assert step["idle_before"] == {"gemv": 8.0, "x": 1.0} and list(step["idle_before"]) == ["gemv", "x"]


def test_tiny_model_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["llama_step_profile.py", "--tiny", "--layers", "1"])
    sp.main()
    assert (tmp_path / "llama_step_profile.json").exists()
