"""Device-time measurement shared by the benchmark scripts.

A lone jitted call costs ~50 us of host dispatch, so one call's wall time says
nothing about the GPU. ``device_time`` jits ``fn`` unrolled over ``len(arg_sets)``
independent argument sets (distinct buffers, so nothing is shared through L2 or
removed by CSE), queues ``calls`` of that jitted function without blocking, and
divides the wall time by the number of ops. Median of ``repeats``. ``loop_time`` runs the
ops in one jitted loop instead: one dispatch for thousands of ops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def device_time(fn: Callable, arg_sets: Sequence[tuple], calls: int = 10, repeats: int = 5) -> float:
    """Median seconds per ``fn(*args)`` over queued, unrolled calls."""
    many = jax.jit(lambda sets: [fn(*args) for args in sets])
    jax.block_until_ready(many(arg_sets))  # compile + warm up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = many(arg_sets)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) / (calls * len(arg_sets)))
    return statistics.median(samples)


def looped(fn: Callable, iters: int, compiler_options: dict | None = None) -> Callable:
    """``jit(sets -> outputs)`` running ``iters`` rounds of ``fn(*args)`` for every ``args`` in ``sets``,
    compiled with XLA ``compiler_options`` (debug option names, as in ``XLA_FLAGS``) if given.

    The operands ride in the loop's carry through an optimization barrier, so XLA cannot
    prove them loop-invariant and hoist the ops out; the outputs are the carry too, so none
    is dead or sliced down.
    """

    def rounds(sets):
        def body(_, carry):
            fresh = jax.lax.optimization_barrier(carry[0])
            return fresh, [fn(*args) for args in fresh]

        first = jax.eval_shape(lambda: [fn(*args) for args in sets])
        zeros = jax.tree.map(jnp.zeros_like, first)  # with the outputs' shardings, where their types carry them
        return jax.lax.fori_loop(0, iters, body, (sets, zeros))[1]

    return jax.jit(rounds, compiler_options=compiler_options)


def loop_time(
    fn: Callable, arg_sets: Sequence[tuple], iters: int = 50, repeats: int = 5, compiler_options: dict | None = None
) -> float:
    """Median seconds per ``fn(*args)`` over one :func:`looped` call of ``iters`` rounds of every set
    (compiled with ``compiler_options``).

    One dispatch covers ``iters * len(arg_sets)`` ops, so host dispatch jitter cannot leave the
    GPU idle between them.
    """
    run = looped(fn, iters, compiler_options)
    jax.block_until_ready(run(arg_sets))  # compile + warm up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(arg_sets))
        samples.append((time.perf_counter() - t0) / (iters * len(arg_sets)))
    return statistics.median(samples)


def same_bytes(got, want) -> bool:
    """Whether two MXArrays hold the same fp8 codes and scale bytes (NaN codes compared as bytes)."""
    return bool(
        np.array_equal(np.asarray(got.data).view(np.uint8), np.asarray(want.data).view(np.uint8))
        and np.array_equal(np.asarray(got.scale), np.asarray(want.scale))
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, e.g. ``1,8,32``."""
    return [positive_int(part) for part in text.split(",")]


def shape_list(text: str) -> list[tuple[int, int]]:
    """argparse type: comma-separated ``NxK`` weight shapes of positive integers with K a multiple of 32, e.g.
    ``14336x4096,4096x14336``."""
    shapes = []
    for part in text.split(","):
        dims = part.split("x")
        if len(dims) != 2:
            raise argparse.ArgumentTypeError(f"{part!r} is not a weight shape NxK (e.g. 14336x4096)")
        n, k = (positive_int(d) for d in dims)
        if k % 32:
            raise argparse.ArgumentTypeError(f"{part!r}: K = {k} is not a multiple of 32 (one MXFP8 block)")
        shapes.append((n, k))
    return shapes


def add_timer_option(ap: argparse.ArgumentParser) -> None:
    """``--timer loop|queued``: :func:`loop_time` (operands in a loop's carry) or :func:`device_time` (queued calls,
    operands as jit arguments in their default layouts); :func:`timer` turns the choice into a function."""
    ap.add_argument(
        "--timer",
        choices=("loop", "queued"),
        default="loop",
        help="timing.loop_time (operands in a loop's carry) or timing.device_time (queued calls, operands as jit "
        "arguments in their default layouts)",
    )


def timer(choice: str) -> Callable[..., float]:
    """``timed(fn, arg_sets, iters)`` in seconds per op, as ``--timer`` chose (:func:`add_timer_option`)."""
    return loop_time if choice == "loop" else lambda fn, sets, iters: device_time(fn, sets, calls=iters)


def finish_checks(name: str, results: dict) -> int:
    """Write ``results`` (whose ``cases`` each say ``ok``) to ``$OUT/name``, print how many passed, and return the
    check's exit status: 1 if any case failed."""
    write_json(name, results)
    bad = [c for c in results["cases"] if not c["ok"]]
    print(f"{len(results['cases']) - len(bad)} of {len(results['cases'])} cases ok", flush=True)
    return 1 if bad else 0


def rotation_copies(set_bytes: int, least: int) -> int:
    """Operand sets of ``set_bytes`` each, at least ``least``, that add up to >= 150 MB (3x the H100's
    L2), so that a timing loop rotating through them reads every weight from HBM."""
    return max(least, -(-150_000_000 // set_bytes))


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of a device-to-device elementwise pass (bytes read + written)."""
    n = nbytes // 2
    xs = [(jnp.full((n,), i, jnp.bfloat16),) for i in range(2)]
    t = device_time(lambda x: x + jnp.bfloat16(1), xs, calls=5)
    return 2 * n * 2 / t


def bf16_matmul_rate(size: int = 8192) -> float:
    """FLOP/s of a bf16 ``[size, size] @ [size, size]`` jnp.dot."""
    key = jax.random.key(0)
    sets = [
        (
            jax.random.normal(key, (size, size), jnp.bfloat16),
            jax.random.normal(key, (size, size), jnp.bfloat16),
        )
        for _ in range(2)
    ]
    t = device_time(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.bfloat16), sets, calls=5)
    return 2 * size**3 / t


def out_dir() -> Path:
    path = Path(os.environ.get("OUT", "bench_out"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(name: str, payload: dict) -> Path:
    path = out_dir() / name
    path.write_text(json.dumps(payload, indent=1))
    return path


def failure(e: Exception) -> str:
    """``e``'s type and first line (at most 300 characters): how a probe reports a variant that failed."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def environment() -> dict:
    import jaxlib

    dev = jax.devices()[0]
    return {
        "device": dev.device_kind,
        "platform": dev.platform,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "sms": getattr(dev, "core_count", None),
    }
