"""Probe: the large-M route with its weight decode overlapped with its GEMM on a second CUDA stream.

For M > 256 the ``hopper`` backend decodes the weight to exact bf16 in one Pallas pass, then runs cuBLAS; the decode
(3 bytes of traffic a weight element) is what keeps it under bf16 (docs/benchmark_log.md, "Where the large-M time
goes"). The GEMM is compute-bound and the decode memory-bound, so they could share the GPU: here the weight is
decoded in ``C`` chunks along N, chunk ``j + 1``'s decode annotated to run on ``gpu_stream:1`` (``compute_on``, XLA's
stream annotation) while chunk ``j``'s GEMM runs, and the chunks' outputs concatenated (``seq``: the same chunks on
one stream; ``parts``: the chunks' outputs returned apart, to price the concatenation). Each variant is timed as
queued single calls (one program a call, operand sets rotated so that the weights come from HBM), against bf16
``jnp.dot`` and the route as shipped, in interleaved rounds; its output is compared with the route's.

    PYTHONPATH=. python3 benchmarks/stream_overlap_probe.py

Writes ``$OUT/stream_overlap_probe.json``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import environment, failure, rotation_copies, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402
from mxfp8_xla.mxarray import MXArray  # noqa: E402

CASES = ((14336, 4096, 2048), (4096, 14336, 2048), (28672, 4096, 4096))
"""(N, K, M)."""
DN = (((1,), (1,)), ((), ()))


def on_stream(fn: Callable, stream: int) -> Callable:
    """``fn`` annotated to run on XLA's compute stream ``stream`` (``compute_on2`` before jax 0.11)."""
    from jax.experimental import compute_on as co

    make = getattr(co, "compute_on2", None) or co.compute_on
    return make(fn, compute_type=f"gpu_stream:{stream}", out_memory_spaces=jax.memory.Space.Device)


def chunked(chunks: int, streams: bool, parts: bool = False) -> Callable:
    """The large-M route with the weight decoded in ``chunks`` pieces along N, each piece's GEMM after its decode;
    ``streams``: the decodes on stream 1; ``parts``: the pieces' outputs returned apart."""

    def product(x, w):
        n = w.shape[0] // chunks
        xd = hopper.decode_operand(x)
        decode = on_stream(hopper.decode_operand, 1) if streams else hopper.decode_operand
        outs = []
        for j in range(chunks):
            wj = MXArray(w.data[j * n : (j + 1) * n], w.scale[j * n : (j + 1) * n])
            outs.append(jax.lax.dot_general(xd, decode(wj), DN, preferred_element_type=jnp.bfloat16))
        return tuple(outs) if parts else jnp.concatenate(outs, axis=1)

    return product


def queued_us(fn: Callable, sets: list[tuple], calls: int = 10) -> float:
    """Microseconds a call: ``calls`` rounds over ``sets`` of single jitted calls, queued, one sync."""
    jitted = jax.jit(fn)
    jax.block_until_ready([jitted(*s) for s in sets])
    t0 = time.perf_counter()
    for _ in range(calls):
        out = [jitted(*s) for s in sets]
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / (calls * len(sets)) * 1e6


def case(n: int, k: int, m: int, rounds: int = 3) -> dict:
    copies = rotation_copies(n * k, least=2)
    keys = jax.random.split(jax.random.key(n + k + m), 2 * copies)
    ws = [mx.quantize(jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02) for i in range(copies)]
    xs = [jax.random.normal(keys[copies + i], (m, k), jnp.bfloat16) for i in range(copies)]
    wbs = [mx.dequantize(w, jnp.bfloat16) for w in ws]
    route = jax.jit(lambda x, w: hopper.matmul(x, w, jnp.bfloat16))
    ref = np.asarray(route(xs[0], ws[0]), np.float32)
    sets = list(zip(xs, ws, strict=True))
    fns = {
        "bf16": (lambda x, wb: jnp.dot(x, wb.T, preferred_element_type=jnp.bfloat16), list(zip(xs, wbs, strict=True))),
        "route": (route, sets),
    }
    for c in (2, 4):
        fns[f"seq{c}"] = (chunked(c, False), sets)
        fns[f"streams{c}"] = (chunked(c, True), sets)
    fns["streams4_parts"] = (chunked(4, True, parts=True), sets)
    row: dict = {"n": n, "k": k, "m": m}
    for label, (fn, args) in list(fns.items())[1:]:
        try:
            compiled = jax.jit(fn).lower(*args[0]).compile()
            out = compiled(*args[0])
            out = np.concatenate([np.asarray(o, np.float32) for o in out], axis=1) if isinstance(out, tuple) else out
            err = float(np.max(np.abs(np.asarray(out, np.float32) - ref)) / np.max(np.abs(ref)))
            annotated = "_xla_stream_annotation" in compiled.as_text()
            row[label] = {"rel_err_vs_route": err, "stream_annotated": annotated}
        except Exception as e:  # noqa: BLE001
            row[label] = {"error": failure(e)}
            fns.pop(label)
    runs = {label: [] for label in fns}
    for _ in range(rounds):
        for label, (fn, args) in fns.items():
            runs[label].append(queued_us(fn, args))
    bf16 = statistics.median(runs["bf16"])
    row["bf16_us"] = bf16
    for label in fns:
        if label != "bf16":
            us = statistics.median(runs[label])
            row[label].update(us=us, rounds_us=runs[label], ratio=bf16 / us)
    return row


def main() -> None:
    results = {"environment": environment(), "cases": []}
    print(results["environment"], flush=True)
    for n, k, m in CASES:
        row = case(n, k, m)
        results["cases"].append(row)
        print(f"(N, K, M) = ({n}, {k}, {m}): bf16 {row['bf16_us']:.1f} us", flush=True)
        for label, v in row.items():
            if isinstance(v, dict):
                cells = (
                    f"{v['us']:8.1f} us {v['ratio']:5.2f}x  error vs route {v['rel_err_vs_route']:.1e}  "
                    f"annotated {v['stream_annotated']}  rounds {[round(t, 1) for t in v['rounds_us']]}"
                    if "us" in v
                    else v.get("error", v)
                )
                print(f"  {label:>15}: {cells}", flush=True)
        write_json("stream_overlap_probe.json", results)


if __name__ == "__main__":
    main()
