"""Probe: the library's add-and-norm GEMV (``cuda_gemv.add_norm_rows``) against XLA's norm and the one-row GEMV.

In the Llama decode at batch 1 (docs/benchmark_log.md, "The slow mode's cause") the RMSNorms before the qkv and gate/up
projections are two XLA launches each (the sum of squares, then the scaling, each recomputing the residual stream),
about 27 us of a 370 us MXFP8 step. The add-and-norm kernel (``gemv.cu``; first built here as a probe, at c964f48)
takes the residual ``x``, the block's output ``delta`` and the norm weight, writes the new residual
``h = x + delta`` and multiplies ``RMSNorm(h)`` by the weight as the one-row kernel does, in one launch. Parts:

Each part runs for the row's and the norm weight's dtypes in ``--combos`` (``x/norm weight``; bf16/bf16 is the Llama
decode's, and each other pair has a kernel of its own since the twenty-seventh session):

1. ``numerics``, at the Llama-3-8B shapes the norms feed, (6144, 4096) and (28672, 4096): ``h`` bit for bit against
   XLA's; the quantized activation the kernel multiplies (read back through an identity weight, as
   ``cuda_gemv_probe.py``'s edges do) against ``quantize(RMSNorm(h))`` computed by XLA on the GPU, element by element:
   on the rounded ``h`` without excess precision (then they may differ only where the float32 sum of squares, summed
   in another order, moves a rounding), and for bf16/bf16 also as the decode computes it (``x + delta`` fused into the
   norm; with XLA's default excess precision the sum need not be rounded to bf16 there, on CPU 100 of 512 normalized
   elements differed from the rounded formula's) and on the rounded ``h`` with excess precision; the float32 product
   against emulation's on the first reference; an Inf and a NaN in ``delta`` (``h`` non-finite there, every output
   NaN). A float32 row is drawn with full float32 mantissas, so a kernel that rounded it to bf16 anywhere would differ.
2. ``timing``, same shapes, us a call, each returning the product and ``h``: bf16 (XLA's norm and ``jnp.dot`` on the
   weight stored ``[N, K]``, bf16 rows and norm weight whatever the pair), MXFP8 unfused (``mxfp8_xla.norm``'s add
   and norm in XLA, then the library's GEMV: ``add_rms_norm_matmul`` where no kernel takes the operands), the fused
   kernel, the library's GEMV alone on a row of the pair's dtype (the floor the fused kernel's norm adds to), and bf16
   ``jnp.dot`` alone (so that the GEMV's ratio compares with earlier runs').

Run on the device: ``PYTHONPATH=. python3 benchmarks/gemv_norm_probe.py [--combos bf16/bf16,f32/f32] [--parts timing]
[--shapes 1024x512,2048x16384]``; JSON to ``$OUT/gemv_norm_probe.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import dequant_bf16, identity_weight, operands, reference, rel_err  # noqa: E402
from timing import environment, failure, loop_time, write_json  # noqa: E402

from examples.llama.model import RMSNorm  # noqa: E402
from mxfp8_xla import MXArray, dequantize, norm, quantize  # noqa: E402
from mxfp8_xla.backends import cuda_gemv  # noqa: E402

SHAPES = ((6144, 4096), (28672, 4096))
EPS = 1e-5  # Llama-3's rms_norm_eps
STRICT = {"xla_allow_excess_precision": False}
"""XLA rounds every bf16 intermediate (by default it may keep float32 between ops, e.g. the norm's bf16 casts)."""
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}
COMBOS = ("bf16/bf16", "f32/f32", "bf16/f32", "f32/bf16")
"""The row's and the norm weight's dtypes, each a kernel of its own; bf16/bf16 is the Llama decode's."""


def combo_dtypes(combo: str) -> tuple[jnp.dtype, jnp.dtype]:
    """``"x/norm weight"`` -> their dtypes."""
    x, g = combo.split("/")
    return DTYPES[x], DTYPES[g]


def add_norm_gemv(
    x: jax.Array, delta: jax.Array, norm_weight: jax.Array, w: MXArray, out_dtype=jnp.bfloat16
) -> tuple[jax.Array, jax.Array]:
    """``(RMSNorm(x + delta) @ w.T, x + delta)``: the library's add-and-norm kernel, one launch."""
    return cuda_gemv.add_norm_rows(x, delta, norm_weight, EPS, w, out_dtype)


def rms_norm(h: jax.Array, norm_weight: jax.Array) -> jax.Array:
    """examples/llama's RMSNorm of ``h`` with ``norm_weight`` (bf16 in, bf16 out)."""
    return RMSNorm(EPS, jnp.bfloat16).apply({"params": {"weight": norm_weight}}, h)


def library_norm(h: jax.Array, norm_weight: jax.Array) -> jax.Array:
    """:func:`mxfp8_xla.norm.rms_norm`, the formula every dtype's kernel computes."""
    return norm.rms_norm(h, norm_weight, EPS)


def unfused(x, delta, norm_weight, w):
    """XLA's residual add and norm, then the library's GEMV: what the decode runs without the fused kernel."""
    h = norm.add(x, delta)
    return cuda_gemv.matmul_rows(library_norm(h, norm_weight), w, jnp.bfloat16), h


def norm_operands(k: int, seed: int, x_dtype=jnp.bfloat16, norm_dtype=jnp.bfloat16) -> tuple[jax.Array, jax.Array]:
    """A ``delta [1, k]`` and a norm weight ``[k]`` (around 1, as trained ones are), drawn in float32 (full float32
    mantissas for a float32 row) and cast to their dtypes."""
    kd, kn = jax.random.split(jax.random.key(1000 + seed))
    delta = (jax.random.normal(kd, (1, k), jnp.float32) * 0.5).astype(x_dtype)
    norm_weight = (1 + 0.1 * jax.random.normal(kn, (k,), jnp.float32)).astype(norm_dtype)
    return delta, norm_weight


def numerics(results: dict, combo: str, shapes=SHAPES) -> None:
    x_dtype, norm_dtype = combo_dtypes(combo)
    bf16 = combo == "bf16/bf16"
    for n, k in shapes:
        x, w = operands(n, k, 1, copies=1)[0]
        x = x.astype(x_dtype)
        delta, norm_weight = norm_operands(k, 0, x_dtype, norm_dtype)
        h_ref = np.asarray(jax.jit(jnp.add)(x, delta))
        strict_norm = rms_norm if bf16 else library_norm
        references = {  # the normalized row, as XLA computes it
            "XLA on the rounded h without excess precision": jax.jit(strict_norm, compiler_options=STRICT)(
                jnp.asarray(h_ref), norm_weight
            ),
        }
        if bf16:
            references["the decode's XLA (x + delta fused into the norm)"] = jax.jit(
                lambda x, d, g: rms_norm(x + d, g)
            )(x, delta, norm_weight)
            references["XLA on the rounded h"] = jax.jit(rms_norm)(jnp.asarray(h_ref), norm_weight)
        strict = references["XLA on the rounded h without excess precision"]
        row = {}
        y32, h = jax.jit(lambda *a: add_norm_gemv(*a, out_dtype=jnp.float32))(x, delta, norm_weight, w)
        h = np.asarray(h)
        row["h bit for bit"] = bool(h.dtype == h_ref.dtype and h.tobytes() == h_ref.tobytes())
        decoded, _ = jax.jit(lambda *a: add_norm_gemv(*a, out_dtype=jnp.float32))(
            x, delta, norm_weight, identity_weight(k)
        )
        decoded = np.asarray(decoded).ravel()
        for label, v in references.items():
            want = np.asarray(jax.jit(lambda v: dequantize(quantize(v), jnp.float32))(v)).ravel()
            differ = np.flatnonzero(decoded != want)
            row[f"activation elements differing from {label} (of k)"] = int(differ.size)
            row[f"first differences from {label} (k, kernel, XLA)"] = [
                [int(i), float(decoded[i]), float(want[i])] for i in differ[:4]
            ]
        row["rel_err_f32_out_vs_emulation"] = rel_err(np.asarray(y32), reference(strict, w))
        library = np.asarray(jax.jit(lambda v, w: cuda_gemv.matmul_rows(v, w, jnp.float32))(strict, w))
        row["outputs equal to the library GEMV's on the last row (of n)"] = int(np.sum(np.asarray(y32) == library))
        for bad in (np.inf, np.nan):
            y_bad, h_bad = jax.jit(add_norm_gemv)(x, delta.at[0, 7].set(bad), norm_weight, w)
            row[f"{bad} in delta: h non-finite there, every output NaN"] = bool(
                not np.isfinite(np.asarray(h_bad, np.float32)[0, 7]) and np.isnan(np.asarray(y_bad, np.float32)).all()
            )
        results[f"numerics {combo} ({n}, {k})"] = row
        print(f"numerics {combo} ({n}, {k}): {row}", flush=True)


def timing(results: dict, combo: str, shapes=SHAPES) -> None:
    x_dtype, norm_dtype = combo_dtypes(combo)
    heads = ("bf16", "unfused", "fused", "GEMV", "bf16 dot")
    print(
        f"{combo:>10} {'(N, K)':>14} "
        + " ".join(f"{h:>8}" for h in heads)
        + "  (us; ratios: to bf16, then GEMV to bf16 dot)"
    )
    for n, k in shapes:
        sets = [
            (x.astype(x_dtype), *norm_operands(k, i, x_dtype, norm_dtype), w)
            for i, (x, w) in enumerate(operands(n, k, 1))
        ]
        bf16_sets = [
            (x.astype(jnp.bfloat16), *norm_operands(k, i), dequant_bf16(w)) for i, (x, _, _, w) in enumerate(sets)
        ]
        row = {
            "bf16": loop_time(lambda x, d, g, wb: (jnp.dot(rms_norm(x + d, g), wb.T), x + d), bf16_sets),
            "unfused": loop_time(unfused, sets),
            "fused": loop_time(add_norm_gemv, sets),
            "gemv alone": loop_time(lambda x, d, g, w: cuda_gemv.matmul_rows(x, w, jnp.bfloat16), sets),
            "bf16 dot alone": loop_time(lambda x, d, g, wb: jnp.dot(x, wb.T), bf16_sets),
        }
        row = {key: t * 1e6 for key, t in row.items()}
        results[f"timing {combo} ({n}, {k})"] = row
        ratios = "  ".join(f"{row['bf16'] / row[key]:.2f}x" for key in ("unfused", "fused"))
        ratios += f"  {row['bf16 dot alone'] / row['gemv alone']:.2f}x"
        cells = " ".join(f"{row[key]:8.1f}" for key in ("bf16", "unfused", "fused", "gemv alone", "bf16 dot alone"))
        print(f"{combo:>10} {str((n, k)):>14} {cells}  {ratios}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--combos", default=",".join(COMBOS), help="comma-separated x/norm-weight dtypes")
    parser.add_argument("--parts", default="numerics,timing", help="comma-separated: numerics, timing")
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="comma-separated NxK")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in spec.split("x")) for spec in args.shapes.split(",")]
    results = {"environment": environment()}
    print(results["environment"])
    for part in ({"numerics": numerics, "timing": timing}[name] for name in args.parts.split(",")):
        for combo in args.combos.split(","):
            try:
                part(results, combo, shapes)
            except Exception as e:  # noqa: BLE001
                results[f"{part.__name__} {combo}"] = {"error": failure(e)}
                print(f"{part.__name__} {combo}: {failure(e)}")
            write_json("gemv_norm_probe.json", results)
