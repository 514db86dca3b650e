#!/usr/bin/env python3
"""GPU check of the JAX -> PyTorch DLPack bridge (mxfp8_xla.interop) and backend selection.

    python3 benchmarks/bench_bridge.py            # writes $OUT/bench_bridge.json
                                                      # (or ./bench_out/), prints a table last

Needs jax (CUDA), torch (CUDA build) and this checkout; flashinfer is not needed.
Sections (each runs even if another fails; failures are recorded, exit code 1):

1. correctness: the "torch" backend inside jit vs "emulation" on random data, fresh
   inputs per call, rank-2 and rank-3, float32 and bfloat16 outputs, command buffers
   on and off.
2. stream ordering: an XLA producer (heavy matmul) -> bridged torch matmul -> XLA
   consumer, many queued iterations with fresh inputs; and a bridged op that reads a
   fresh jit argument and writes the jit result directly. Any stale read shows up as
   a mismatch against the pure-XLA reference of the same iteration.
3. overhead: a jitted chain of 32 bridged bf16 torch matmuls (writing straight into
   XLA's output buffer) vs the same chain of native jnp.dot, command buffers on and
   off; device time from many queued calls (and a jitted fori_loop), reported as us
   per bridged call over native. Also how often Python is entered per execution.
4. early failure: backend="flashinfer" on a GPU below SM100 must fail while tracing
   with a clear message naming the layer; "auto" must pick the hopper kernel on SM90
   (emulation on other GPUs below SM100) and log why.

Runs on CPU too (smoke test; the timings then mean nothing). Total < 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")  # leave room for torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import jax  # noqa: E402  (import JAX before torch: its CUDA plugin picks the libraries)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla import interop  # noqa: E402
from mxfp8_xla.backends import BackendUnavailableError, select_backend  # noqa: E402
from mxfp8_xla.interop import CALL_COUNTS, torch_callback  # noqa: E402

HIGHEST = jax.lax.Precision.HIGHEST
RESULTS: dict = {"sections": {}, "failures": []}
TABLE: list[tuple[str, str, str]] = []  # (section, item, value)


def note(section: str, item: str, value: object) -> None:
    RESULTS["sections"].setdefault(section, {})[item] = value
    TABLE.append((section, item, value if isinstance(value, str) else json.dumps(value)))


def run_section(name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        fn()
        ok = True
    except Exception as e:  # noqa: BLE001 - record and continue with the next section
        ok = False
        RESULTS["failures"].append({"section": name, "error": f"{type(e).__name__}: {e}"})
        note(name, "ERROR", _short_error(e))
        traceback.print_exc()
    note(name, "ok", ok)
    note(name, "seconds", round(time.perf_counter() - t0, 1))


def _short_error(e: Exception) -> str:
    """The innermost ``SomeError: message`` line (XLA wraps callback errors in tracebacks)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    inner = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception")) and ": " in ln]
    return (inner[-1] if inner else f"{type(e).__name__}: {lines[0] if lines else ''}")[:400]


def set_command_buffers(on: bool) -> None:
    """Default for bridged calls traced from now on (read by torch_callback at trace time)."""
    os.environ[interop.COMMAND_BUFFER_ENV] = "1" if on else "0"


# --------------------------------------------------------------------------- 0. environment


def environment() -> None:
    dev = jax.devices()[0]
    note("env", "jax", jax.__version__)
    note("env", "torch", torch.__version__)
    note("env", "torch_cuda", torch.version.cuda)
    note("env", "device", f"{dev.platform}: {getattr(dev, 'device_kind', '?')}")
    note("env", "compute_capability", getattr(dev, "compute_capability", None))
    note("env", "XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference must be true float32
        torch.zeros(1, device="cuda")  # initialize torch's CUDA state outside any XLA callback
        note("env", "torch_device", torch.cuda.get_device_name(0))
    try:
        from mxfp8_xla.info import info

        report = info()
        note("env", "backends", {k: v["usable"] for k, v in report["backends"].items()})
        note("env", "auto_choice", report["auto_choice"]["backend"])
    except Exception as e:  # noqa: BLE001
        note("env", "info_error", f"{type(e).__name__}: {e}")


ON_GPU = jax.devices()[0].platform == "gpu"


# --------------------------------------------------------------------------- 1. correctness


def _bound(xq, wq):
    xd = np.abs(np.asarray(jax.jit(mx.dequantize)(xq), np.float64))
    wd = np.abs(np.asarray(jax.jit(mx.dequantize)(wq), np.float64))
    return xd.shape[-1] * 2.0**-23 * (xd @ wd.T)


def correctness() -> None:
    quantize = jax.jit(mx.quantize)
    cases = [((256,), 512, 1024), ((4, 64), 768, 1024), ((3,), 128, 4096)]
    for cmd in (True, False):
        set_command_buffers(cmd)
        worst_f32 = 0.0
        worst_bf16_ulps = 0.0
        n_checked = 0
        for lead, n, k in cases:
            wq = quantize(jax.random.normal(jax.random.key(n), (n, k)) * 0.05)
            emu32 = jax.jit(lambda xq, w: mx.mxfp8_matmul(xq, w, out_dtype=jnp.float32))
            ref32 = jax.jit(lambda xq, w: mx.mxfp8_matmul(xq, w, out_dtype=jnp.float32, backend="torch", name="check"))
            emu16 = jax.jit(lambda xq, w: mx.mxfp8_matmul(xq, w, out_dtype=jnp.bfloat16))
            ref16 = jax.jit(lambda xq, w: mx.mxfp8_matmul(xq, w, out_dtype=jnp.bfloat16, backend="torch"))
            for it in range(4):  # fresh inputs every call
                x = jax.random.normal(jax.random.key(1000 * it + k), (*lead, k)) * 4
                xq = quantize(x)
                a = np.asarray(ref32(xq, wq), np.float64)
                b = np.asarray(emu32(xq, wq), np.float64)
                ratio = float(np.max(np.abs(a - b) / np.maximum(_bound(xq, wq), 1e-30)))
                worst_f32 = max(worst_f32, ratio)
                a16 = np.asarray(ref16(xq, wq), np.float32)
                b16 = np.asarray(emu16(xq, wq), np.float32)
                ulp = np.exp2(np.floor(np.log2(np.maximum(np.abs(b16), 1e-30))) - 7)
                worst_bf16_ulps = max(worst_bf16_ulps, float(np.max(np.abs(a16 - b16) / ulp)))
                n_checked += 1
        tag = "cmdbuf_on" if cmd else "cmdbuf_off"
        note("correctness", f"{tag}: calls checked", n_checked)
        note("correctness", f"{tag}: f32 max |err| / bound (<= 1 passes)", round(worst_f32, 4))
        note("correctness", f"{tag}: bf16 max |err| in ulps (<= 1 passes)", round(worst_bf16_ulps, 3))
        if worst_f32 > 1 or worst_bf16_ulps > 1:
            raise AssertionError(f"torch backend disagrees with emulation ({tag})")


# --------------------------------------------------------------------------- 2. stream ordering


def _bridged_mm_f32(x, w, name):
    spec = jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), jnp.float32)
    return torch_callback(lambda a, b, *, out: torch.matmul(a, b.t(), out=out), spec, x, w, pass_out=True, name=name)


def stream_ordering() -> None:
    m = k = n = 2048 if ON_GPU else 256
    iters = 100 if ON_GPU else 5
    p = jax.random.normal(jax.random.key(1), (k, k)) / np.sqrt(k)
    w = jax.random.normal(jax.random.key(2), (n, k)) / np.sqrt(k)

    def make(bridged: bool, name: str):
        def step(key, p, w):
            x = jax.random.normal(key, (m, k))  # producer: new buffer every iteration
            for _ in range(3):  # ... and slow enough to expose a missing dependency
                x = jnp.tanh(jnp.dot(x, p, precision=HIGHEST))
            y = _bridged_mm_f32(x, w, name) if bridged else jnp.dot(x, w.T, precision=HIGHEST)
            # consumer: reads everything the bridge wrote
            return jnp.sum(y * y, axis=1), y[:8, :256]

        return jax.jit(step)

    ref = make(False, "")
    keys = [jax.random.key(100 + i) for i in range(iters)]
    expected = [ref(kk, p, w) for kk in keys]
    for cmd in (True, False):
        set_command_buffers(cmd)
        name = f"order_{'on' if cmd else 'off'}"
        f = make(True, name)
        jax.block_until_ready(f(keys[0], p, w))  # compile + warm-up (+ capture)
        before = CALL_COUNTS[name]
        outs = [f(kk, p, w) for kk in keys]  # all queued, then checked
        jax.block_until_ready(outs)
        py_per_exec = (CALL_COUNTS[name] - before) / iters
        bad = 0
        for (s, y), (s_ref, y_ref) in zip(outs, expected, strict=True):
            if not (np.allclose(s, s_ref, rtol=2e-3) and np.allclose(y, y_ref, rtol=2e-3, atol=2e-3)):
                bad += 1
        tag = "cmdbuf_on" if cmd else "cmdbuf_off"
        note("stream_ordering", f"{tag}: producer->bridge->consumer mismatches", f"{bad}/{iters}")
        note("stream_ordering", f"{tag}: python entries per execution", round(py_per_exec, 3))
        if bad:
            raise AssertionError(f"stale or racing reads around the bridge ({tag}): {bad}/{iters}")

        # Fresh jit arguments read directly by the bridge, result written straight to the output.
        g_name = f"fresh_{'on' if cmd else 'off'}"
        g = jax.jit(lambda x, w, g_name=g_name: _bridged_mm_f32(x, w, g_name))
        xs = [jax.device_put(np.random.default_rng(i).standard_normal((m, k), np.float32)) for i in range(20)]
        jax.block_until_ready(g(xs[0], w))
        before = CALL_COUNTS[g_name]
        ys = [g(x, w) for x in xs]
        jax.block_until_ready(ys)
        py_per_exec = (CALL_COUNTS[g_name] - before) / len(xs)
        ref_g = jax.jit(lambda x, w: jnp.dot(x, w.T, precision=HIGHEST))
        bad = sum(not np.allclose(y, ref_g(x, w), rtol=2e-3, atol=2e-3) for x, y in zip(xs, ys, strict=True))
        note("stream_ordering", f"{tag}: fresh-argument mismatches", f"{bad}/{len(xs)}")
        note("stream_ordering", f"{tag}: python entries per execution (fresh args)", round(py_per_exec, 3))
        if bad:
            raise AssertionError(f"stale reads of fresh jit arguments ({tag}): {bad}/{len(xs)}")


# --------------------------------------------------------------------------- 3. overhead


def _bridged_mm_bf16(h, w, name):
    spec = jax.ShapeDtypeStruct((h.shape[0], w.shape[0]), jnp.bfloat16)
    return torch_callback(lambda a, b, *, out: torch.matmul(a, b.t(), out=out), spec, h, w, pass_out=True, name=name)


def _time_queued(f, args, reps: int, repeats: int = 5) -> float:
    """Median seconds per call over ``repeats`` bursts of ``reps`` queued calls."""
    for _ in range(3):  # compile, XLA's warm-up run, command-buffer capture
        jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(reps):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def overhead() -> None:
    layers, m, d = 32, 128, (1024 if ON_GPU else 128)
    reps = 100 if ON_GPU else 3
    loop_steps = 10 if ON_GPU else 2
    # One parameter buffer per layer (slicing a stacked array would add copies on the bridged side).
    keys = jax.random.split(jax.random.key(3), layers)
    ws = [(jax.random.normal(kk, (d, d)) / np.sqrt(d)).astype(jnp.bfloat16) for kk in keys]
    h0 = jax.random.normal(jax.random.key(4), (m, d)).astype(jnp.bfloat16)

    def chain(kind: str, name: str):
        def run(h, ws):
            for i in range(layers):
                if kind == "native":
                    h = jnp.dot(h, ws[i].T, preferred_element_type=jnp.bfloat16)
                else:
                    h = _bridged_mm_bf16(h, ws[i], name)
            return h

        return run

    note("overhead", "shape", f"{layers} layers of [{m}, {d}] @ [{d}, {d}].T bf16")
    per_chain = {}
    for kind, cmd in (("native", None), ("bridge", True), ("bridge", False)):
        tag = kind if cmd is None else f"bridge_cmdbuf_{'on' if cmd else 'off'}"
        if cmd is not None:
            set_command_buffers(cmd)
        run = chain(kind, tag)
        f = jax.jit(run)
        t = _time_queued(f, (h0, ws), reps)
        before = CALL_COUNTS[tag]
        jax.block_until_ready(f(h0, ws))
        py = CALL_COUNTS[tag] - before
        loop = jax.jit(lambda h, ws, run=run: jax.lax.fori_loop(0, loop_steps, lambda i, h: run(h, ws), h))
        t_loop = _time_queued(loop, (h0, ws), max(reps // loop_steps, 2)) / loop_steps
        per_chain[tag] = (t, t_loop)
        note("overhead", f"{tag}: us per chain (queued calls)", round(t * 1e6, 1))
        note("overhead", f"{tag}: us per chain (jitted fori_loop)", round(t_loop * 1e6, 1))
        if cmd is not None:
            note("overhead", f"{tag}: python entries per execution", py)
        if cmd and ON_GPU and py >= layers:
            note(
                "overhead",
                "hint",
                "command buffers did not capture the bridged calls; check XLA_FLAGS "
                "(--xla_gpu_enable_command_buffer must include CUSTOM_CALL)",
            )
    # Same numbers? (bf16 cuBLAS in both, possibly different kernels: loose check)
    native = np.asarray(jax.jit(chain("native", "x"))(h0, ws), np.float32)
    set_command_buffers(True)
    bridged = np.asarray(jax.jit(chain("bridge", "check_chain"))(h0, ws), np.float32)
    rel = float(np.linalg.norm(bridged - native) / np.linalg.norm(native))
    note("overhead", "bridge vs native chain relative difference", f"{rel:.2e}")
    for tag in ("bridge_cmdbuf_on", "bridge_cmdbuf_off"):
        for i, how in enumerate(("queued calls", "jitted fori_loop")):
            extra = (per_chain[tag][i] - per_chain["native"][i]) / layers * 1e6
            note("overhead", f"{tag}: us per bridged call over native ({how})", round(extra, 2))
    if rel > 0.1:  # sanity only: both are bf16 cuBLAS chains, possibly different kernels
        raise AssertionError(f"bridged chain differs from native chain: {rel:.2e}")


# --------------------------------------------------------------------------- 4. early failure


def early_failure() -> None:
    dev = jax.devices()[0]
    cc = getattr(dev, "compute_capability", None)
    sm = None
    if cc:
        major, _, minor = str(cc).partition(".")
        sm = int(major) * 10 + int(minor or 0)
    note("early_failure", "device SM", sm)
    w = jax.jit(mx.quantize)(jnp.ones((4096, 4096), jnp.float32))
    x = jnp.ones((8, 4096), jnp.bfloat16)
    if sm is not None and sm >= 100:
        note("early_failure", "skipped", "device is SM100+: flashinfer may be usable here")
        return
    f = jax.jit(lambda x, w: mx.mxfp8_matmul(x, w, backend="flashinfer", name="model.layers.0.mlp.up_proj"))
    t0 = time.perf_counter()
    try:
        f.lower(x, w)
    except BackendUnavailableError as e:
        note(
            "early_failure",
            "forced flashinfer: raised at trace time after s",
            round(time.perf_counter() - t0, 3),
        )
        note("early_failure", "message", str(e))
        assert "model.layers.0.mlp.up_proj" in str(e) and "w [4096, 4096]" in str(e)
    else:
        raise AssertionError("backend='flashinfer' did not fail below SM100")
    os.environ["MXFP8_XLA_BACKEND"] = "flashinfer"
    try:
        jax.jit(lambda x, w: mx.mxfp8_matmul(x, w, backend="auto", name="env.layer")).lower(x, w)
        raise AssertionError("MXFP8_XLA_BACKEND=flashinfer did not fail below SM100")
    except BackendUnavailableError as e:
        note("early_failure", "env-forced message", str(e))
    finally:
        del os.environ["MXFP8_XLA_BACKEND"]
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("mxfp8_xla.backends")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        choice = select_backend("auto", n=4096, k=4096, name="model.layers.0.mlp.down_proj")
    finally:
        log.removeHandler(handler)
    note("early_failure", "auto choice", choice)
    note("early_failure", "auto log line", records[0] if records else "(none)")
    assert choice == ("hopper" if _sm() == 90 else "emulation") and records


def _sm() -> int | None:
    from mxfp8_xla.backends.select import probe_capability

    return probe_capability().sm


# --------------------------------------------------------------------------- main


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help, and no typos
    t0 = time.perf_counter()
    run_section("env", environment)
    run_section("correctness", correctness)
    run_section("stream_ordering", stream_ordering)
    run_section("overhead", overhead)
    run_section("early_failure", early_failure)
    RESULTS["total_seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS["python_entries"] = dict(CALL_COUNTS)

    out_dir = Path(os.environ.get("OUT") or "bench_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench_bridge.json"
    path.write_text(json.dumps(RESULTS, indent=2, default=str))

    width = max(len(f"{s} | {i}") for s, i, _ in TABLE)
    print("\n" + "=" * 100)
    for section, item, value in TABLE:
        print(f"{f'{section} | {item}':<{width}}  {value}")
    print("=" * 100)
    status = "OK" if not RESULTS["failures"] else f"FAILED: {[f['section'] for f in RESULTS['failures']]}"
    print(f"{status}; total {RESULTS['total_seconds']} s; JSON: {path}")
    return 0 if not RESULTS["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
