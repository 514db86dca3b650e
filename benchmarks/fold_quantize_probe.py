"""Probe: the Triton GEMM quantizing the raw activation in-kernel, against the shipped separate pass.

For M <= 16 at K = 4096 the shipped ``hopper`` backend runs three kernels: the one-pass Pallas
quantization of the activation, the Triton GEMM, and the sum over K splits. Under Nsight Compute
(``ncu_small_m.py``, H200, (14336, 4096), M = 1) the quantization took 2.9 us and the sum 2.9 us
beside the GEMM's 30.4 us. ``hopper.matmul_2d`` also takes the raw activation and quantizes each
``[bm, bk]`` slice in the kernel (``numerics.quantize_blocks``, the same function, so the
result is bit-identical); this times that against the shipped route, end to end (raw bf16 in,
bf16 out), with bf16 ``jnp.dot`` in the same run, and checks the two outputs bit for bit.

Usage: ``PYTHONPATH=. python3 benchmarks/fold_quantize_probe.py [--rows 1,8,16]``; JSON to ``$OUT``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import operands, rel_err  # noqa: E402
from timing import environment, loop_time, write_json  # noqa: E402

from mxfp8_xla import dequantize  # noqa: E402
from mxfp8_xla.backends import emulation, hopper  # noqa: E402

SHAPES = ((14336, 4096), (28672, 4096), (6144, 4096), (4096, 4096), (1024, 4096))  # where Triton is routed


def shipped(x, w, out_dtype=jnp.bfloat16):
    return hopper.matmul_2d(hopper.quantize_activations(x), w, out_dtype)


def folded(x, w, out_dtype=jnp.bfloat16):
    return hopper.matmul_2d(x, w, out_dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,8,16")
    rows = [int(r) for r in parser.parse_args().rows.split(",")]
    results = {"env": environment(), "cells": []}
    print(results["env"], flush=True)
    for n, k in SHAPES:
        for m in rows:
            sets = operands(n, k, m)
            x0, w0 = sets[0]
            ref = np.asarray(emulation.matmul(hopper.quantize_activations(x0), w0, jnp.float32))
            a = np.asarray(jax.jit(shipped, static_argnums=2)(x0, w0, jnp.float32))
            b = np.asarray(jax.jit(folded, static_argnums=2)(x0, w0, jnp.float32))
            bf16_sets = [(x, dequantize(w, jnp.bfloat16)) for x, w in sets[:3]]
            cell = {
                "n": n,
                "k": k,
                "m": m,
                "config": str(hopper.default_config(m, n, k)),
                "bf16_dot_us": loop_time(lambda x, wb: jnp.dot(x, wb.T), bf16_sets) * 1e6,
                "shipped_us": loop_time(shipped, sets) * 1e6,
                "folded_us": loop_time(folded, sets) * 1e6,
                "bit_identical": bool(np.array_equal(a.view(np.uint32), b.view(np.uint32))),
                "folded_rel_err": rel_err(b, ref),
            }
            base = cell["bf16_dot_us"]
            print(
                f"({n}, {k}) M={m}: bf16 {base:.1f} us, shipped {cell['shipped_us']:.1f} us "
                f"({base / cell['shipped_us']:.2f}x), folded {cell['folded_us']:.1f} us "
                f"({base / cell['folded_us']:.2f}x), bit-identical {cell['bit_identical']}, "
                f"err {cell['folded_rel_err']:.1e}",
                flush=True,
            )
            results["cells"].append(cell)
            write_json("fold_quantize_probe.json", results)


if __name__ == "__main__":
    main()
