"""Probe: the MXFP8 product for a few rows as an XLA reduction (multiply, then sum over K), no custom kernel.

``jnp.dot(x, dequantize(w).T)`` does not fuse: XLA writes the dequantized weight to HBM and
reads it back. A reduction does fuse its elementwise producers, and XLA's row-reduction
emitter reads an fp8 weight at about copy speed (the "XLA reads the fp8 weight" column of
``cuda_small_m_probe.py``: ``jnp.max`` over each row). So for M = 1..16 this writes the
product as ``sum_k dequantize(w)[n, k] * dequantize(x)[m, k]``: each weight element is decoded
exactly to float32 (byte -> float, times its block's 2^e) inside the reduction, multiplied by
the exactly dequantized activation (a ``[M, K]`` float32 operand, quantized by the shipped
one-pass kernel) and summed in float32. The products are exact and the dequantized values are
emulation's own, so the result differs from emulation only in the order of the float32 sums.

Variants (output order of the reduction; the weight is read once per output row ``n`` only if
the ``M`` outputs of a row are reduced next to each other):
  ``mn``  ``sum(wd[None] * xd[:, None], -1)`` -> ``[M, N]`` (row ``n`` read ``M`` times, far apart)
  ``nm``  ``sum(wd[:, None] * xd[None], -1).T`` -> ``[N, M]``, transposed (row ``n``'s outputs adjacent)
  ``nm1`` ``nm`` with the weight's block factor as one float32 multiply (``scale_to_factor``) instead of two

Timed by ``timing.loop_time`` end to end (raw bf16 activation in, bf16 out) against bf16
``jnp.dot`` and the shipped ``hopper`` backend in the same run; every cell checked against
emulation, and the edge weight (scale bytes 0, 1, 254, 255) checked NaN for NaN.

Usage: ``PYTHONPATH=. python3 benchmarks/xla_gemv_probe.py [--rows 1,8,16]``; JSON to ``$OUT``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import SHAPES, edge_operands, operands, rel_err  # noqa: E402
from timing import environment, failure, loop_time, out_dir, write_json  # noqa: E402

from mxfp8_xla import MXArray, dequantize, mxfp8_matmul, numerics  # noqa: E402
from mxfp8_xla.backends import emulation, hopper  # noqa: E402

VARIANTS = ("mn", "nm", "nm1")
PROBE_SHAPES = SHAPES + ((1024, 4096),)  # + Llama-3-8B's k_proj / v_proj


def weight_f32(w: MXArray, one_factor: bool = False) -> jax.Array:
    """``w`` decoded exactly to float32 ``[N, K]``, as elementwise ops a reduction can fuse.

    ``one_factor``: one multiply by ``scale_to_factor`` (exact on the GPU) instead of emulation's two.
    """
    n, k = w.shape
    blocks = w.data.astype(jnp.float32).reshape(n, k // numerics.BLOCK_SIZE, numerics.BLOCK_SIZE)
    if one_factor:
        out = blocks * numerics.scale_to_factor(w.scale)[..., None]
    else:
        hi, lo = numerics.scale_to_float(w.scale)
        out = blocks * hi[..., None] * lo[..., None]
    return out.reshape(n, k)


def gemv(
    x: jax.Array, w: MXArray, variant: str, out_dtype=jnp.bfloat16, quantize=hopper.quantize_activations
) -> jax.Array:
    """``x [M, K]`` raw -> ``[M, N]`` ``out_dtype`` by one fused multiply-and-sum over K."""
    xd = dequantize(quantize(x), jnp.float32)
    wd = weight_f32(w, one_factor=variant == "nm1")
    if variant == "mn":
        out = jnp.sum(wd[None] * xd[:, None], axis=-1)
    elif variant in ("nm", "nm1"):
        out = jnp.sum(wd[:, None] * xd[None], axis=-1).T
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return out.astype(out_dtype)


def time_cell(fn, sets, ref) -> dict:
    """Loop time of ``fn`` (bf16 out) and the error of its float32-out run against ``ref``."""
    try:
        err = rel_err(jax.jit(functools.partial(fn, out_dtype=jnp.float32))(*sets[0]), ref)
        return {"us": loop_time(fn, sets) * 1e6, "rel_err": err}
    except Exception as e:  # noqa: BLE001
        return {"error": failure(e)}


def edge_check() -> dict:
    """NaN positions and finite values of each variant against emulation on the edge weight."""
    x, w = edge_operands()
    ref = np.asarray(emulation.matmul(hopper.quantize_activations(x), w, jnp.float32))
    report = {}
    for variant in VARIANTS:
        out = np.asarray(jax.jit(functools.partial(gemv, variant=variant, out_dtype=jnp.float32))(x, w))
        same_nan = np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(np.isinf(out), np.isinf(ref))
        finite = np.isfinite(ref)
        report[variant] = {
            "nonfinite_match": bool(same_nan),
            "finite_rel_err": rel_err(out[finite], ref[finite]),
        }
    return report


def describe(name: str, cell: dict, base_us: float) -> str:
    """One timed cell as text: time, ratio to bf16 ``jnp.dot``, error against emulation."""
    if "error" in cell:
        return f"{name} {cell['error']}"
    err = f", err {cell['rel_err']:.1e}" if "rel_err" in cell else ""
    return f"{name} {cell['us']:.1f} us ({base_us / cell['us']:.2f}x{err})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,8,16")
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    results = {"env": environment(), "edge": edge_check(), "cells": []}
    print(results["env"], "\nedge:", results["edge"], flush=True)
    for n, k in PROBE_SHAPES:
        for m in rows:
            sets = operands(n, k, m)
            x0, w0 = sets[0]
            if (n, k, m) == (*PROBE_SHAPES[0], rows[0]):  # what XLA made of it
                hlo = jax.jit(functools.partial(gemv, variant="nm")).lower(x0, w0).compile().as_text()
                (out_dir() / "xla_gemv_probe_nm_hlo.txt").write_text(hlo)
            ref = np.asarray(emulation.matmul(hopper.quantize_activations(x0), w0, jnp.float32))
            bf16_sets = [(x, dequantize(w, jnp.bfloat16)) for x, w in sets[:3]]
            row = {"n": n, "k": k, "m": m}
            row["bf16_dot"] = {"us": loop_time(lambda x, wb: jnp.dot(x, wb.T), bf16_sets) * 1e6}
            row["hopper"] = time_cell(
                lambda x, w, out_dtype=jnp.bfloat16: mxfp8_matmul(x, w, out_dtype=out_dtype, backend="hopper"),
                sets,
                ref,
            )
            for variant in VARIANTS:
                row[variant] = time_cell(functools.partial(gemv, variant=variant), sets, ref)
            if m == rows[0]:
                read = loop_time(lambda w: jnp.max(w.data.view(jnp.uint8), axis=1), [(w,) for _, w in sets])
                row["xla_read"] = {"us": read * 1e6}
            base = row["bf16_dot"]["us"]
            cells = ", ".join(describe(name, c, base) for name, c in row.items() if isinstance(c, dict))
            print(f"({n}, {k}) M={m}: {cells}", flush=True)
            results["cells"].append(row)
            write_json("xla_gemv_probe.json", results)


if __name__ == "__main__":
    main()
