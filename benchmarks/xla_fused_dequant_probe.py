"""Probe: does XLA fuse an exact MXFP8 weight decode into its own GEMM (its Triton GEMM fusion)?

``jnp.dot(x, dequantize(w).T)`` wrote the bf16 weight to HBM and read it back on the H100 (issue
5). XLA's GEMM fusion pulls elementwise producers of a dot's operands into the Triton GEMM it
emits, and which ones it accepts depends on how they are written. This times three exact ways to
write the weight's decode to bf16, each feeding ``dot_general`` with the activation quantized and
decoded by the shipped one-pass Pallas kernel (``hopper.decode_operand``):

  ``library``  ``mxfp8_xla.dequantize(w, bfloat16)``: float32 products with emulation's two factors
  ``f32_one``  float32 products with one factor (``numerics.scale_to_factor``), then bf16
  ``bf16_mul`` the E4M3 values converted to bf16 times the factor repeated over its 32 elements, in bf16

(each is exact for scale bytes 1..254: E4M3 values times powers of two fit bf16), and reports for
each whether the optimized HLO's dot fusion reads the fp8 weight itself (``fused``) or a decoded
copy. Against bf16 ``jnp.dot`` and the shipped ``hopper`` backend in the same run, loop timer;
each cell checked against emulation with float32 output, and each variant's NaN and infinity
positions on the edge weight (scale bytes 0, 1, 254, 255).

Each form also runs compiled with ``--xla_gpu_experimental_enable_subchannel_dequantisation_fusion``
(``{form}_sub``; off by default): with it XLA's Triton GEMM fusion accepts a multiply by a scale
broadcast along K (``[N, K/32] -> [N, K/32, 32] -> [N, K]``) as the operand's producer, which it
otherwise never fuses. ``bf16_mul_sub_nocublas`` also sets ``--xla_gpu_cublas_fallback=false``, so
the autotuner cannot pick cuBLAS on the decoded copy instead. The options are per compilation
(``jax.jit(compiler_options=...)``); the bf16 and shipped baselines keep XLA's defaults.

Usage: ``PYTHONPATH=. python3 benchmarks/xla_fused_dequant_probe.py [--variants a,b]``; JSON and the
HLO of each variant at the first cell to ``$OUT``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import edge_operands, operands, rel_err  # noqa: E402
from timing import environment, failure, loop_time, out_dir, write_json  # noqa: E402
from xla_gemv_probe import weight_f32  # noqa: E402

from mxfp8_xla import MXArray, dequantize, mxfp8_matmul, numerics  # noqa: E402
from mxfp8_xla.backends import emulation, hopper  # noqa: E402

CELLS = tuple(((14336, 4096), m) for m in (16, 1, 256, 2048)) + tuple(((4096, 14336), m) for m in (16, 1, 2048))
DN = (((1,), (1,)), ((), ()))


def weight_bf16(w: MXArray, form: str) -> jax.Array:
    """``w`` decoded exactly to bf16 ``[N, K]`` (scale bytes 1..254), written as ``form``."""
    if form == "library":
        return dequantize(w, jnp.bfloat16)
    if form == "f32_one":
        return weight_f32(w, one_factor=True).astype(jnp.bfloat16)
    if form == "bf16_mul":
        factor = numerics.scale_to_factor(w.scale).astype(jnp.bfloat16)  # [N, K/32], powers of two
        return w.data.astype(jnp.bfloat16) * jnp.repeat(factor, numerics.BLOCK_SIZE, axis=1)
    raise ValueError(f"unknown form {form!r}")


FORMS = ("library", "f32_one", "bf16_mul")


def product(x: jax.Array, w: MXArray, form: str, out_dtype=jnp.bfloat16) -> jax.Array:
    return jax.lax.dot_general(hopper.decode_operand(x), weight_bf16(w, form), DN, preferred_element_type=out_dtype)


SUBCHANNEL = {"xla_gpu_experimental_enable_subchannel_dequantisation_fusion": True}
NO_CUBLAS = {"xla_gpu_cublas_fallback": False}
VARIANTS = {form: (functools.partial(product, form=form), {}) for form in FORMS}
VARIANTS |= {f"{form}_sub": (functools.partial(product, form=form), SUBCHANNEL) for form in FORMS}
VARIANTS["bf16_mul_sub_nocublas"] = (functools.partial(product, form="bf16_mul"), SUBCHANNEL | NO_CUBLAS)


def computations(hlo: str) -> list[tuple[bool, str]]:
    """``(is_entry, text)`` of every computation in an HLO module's text."""
    out, current = [], None
    for line in hlo.splitlines():
        if current is None and re.match(r"^(ENTRY )?%\S+ .*\{$", line):
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "}":
                out.append((current[0].startswith("ENTRY"), "\n".join(current)))
                current = None
    return out


def fusion_report(hlo: str, n: int, k: int) -> dict:
    """From the optimized HLO: does a non-entry computation hold a dot and an fp8 operand (the decode fused
    into the GEMM), and does the entry computation materialize a decoded weight (``N * K`` bf16 or float32
    elements, in any shape: XLA wrote it as ``[N, K/32, 32]`` on the H200)?"""
    bodies = computations(hlo)
    entry = "\n".join(text for is_entry, text in bodies if is_entry)
    return {
        "fused": any(re.search(r"\bdot\(", t) and "f8e4m3fn[" in t for is_entry, t in bodies if not is_entry),
        "decoded_weight_in_hbm": any(
            math.prod(int(d) for d in dims.split(",")) == n * k
            for dims in re.findall(r"= (?:bf16|f32)\[([\d,]+)\]", entry)
        ),
    }


Variant = tuple[Callable, dict]  # (fn(x, w, out_dtype=...), XLA compiler options it is compiled with)


def sweep(results: dict, name: str, cells, variants: dict[str, Variant]) -> None:
    """Time each variant's ``fn(x, w)`` end to end, compiled with its XLA options, in every cell against bf16
    ``jnp.dot`` and the shipped backend (both with default options), with its error against emulation and
    :func:`fusion_report`; rows go to ``results["cells"]`` and ``$OUT/{name}_probe.json``, each variant's HLO at
    the first cell to ``$OUT/{name}_{variant}_hlo.txt``."""
    for (n, k), m in cells:
        sets = operands(n, k, m, copies=None if m < 1024 else 4)
        x0, w0 = sets[0]
        ref = np.asarray(emulation.matmul(hopper.quantize_activations(x0), w0, jnp.float32))
        row = {"n": n, "k": k, "m": m}
        bf16_sets = [(x, dequantize(w, jnp.bfloat16)) for x, w in sets[:3]]
        row["bf16_dot_us"] = loop_time(lambda x, wb: jnp.dot(x, wb.T), bf16_sets) * 1e6
        row["hopper_us"] = loop_time(lambda x, w: mxfp8_matmul(x, w, backend="hopper"), sets) * 1e6
        for label, (fn, options) in variants.items():
            try:
                hlo = jax.jit(fn, compiler_options=options).lower(x0, w0).compile().as_text()
                if not results["cells"]:
                    (out_dir() / f"{name}_{label}_hlo.txt").write_text(hlo)
                f32_fn = jax.jit(functools.partial(fn, out_dtype=jnp.float32), compiler_options=options)
                err = rel_err(f32_fn(x0, w0), ref)
                us = loop_time(fn, sets, compiler_options=options) * 1e6
                row[label] = {"us": us, "rel_err": err, **fusion_report(hlo, n, k)}
            except Exception as e:  # noqa: BLE001
                row[label] = {"error": failure(e)}
        base = row["bf16_dot_us"]
        text = [f"bf16 {base:.1f} us", f"hopper {row['hopper_us']:.1f} us ({base / row['hopper_us']:.2f}x)"]
        for label in variants:
            c = row[label]
            text.append(
                f"{label} {c['error']}"
                if "error" in c
                else f"{label} {c['us']:.1f} us ({base / c['us']:.2f}x, fused {c['fused']}, "
                f"decoded in HBM {c['decoded_weight_in_hbm']}, err {c['rel_err']:.1e})"
            )
        print(f"({n}, {k}) M={m}: " + ", ".join(text), flush=True)
        results["cells"].append(row)
        write_json(f"{name}_probe.json", results)


def edge_check(variants: dict[str, Variant]) -> dict:
    """Each variant's NaN and infinity positions against emulation on the edge weight (scale bytes 0, 1, 254,
    255), and its error where both are finite."""
    x, w = edge_operands()
    ref = np.asarray(emulation.matmul(hopper.quantize_activations(x), w, jnp.float32))
    report = {}
    for label, (fn, options) in variants.items():
        try:
            out = np.asarray(jax.jit(functools.partial(fn, out_dtype=jnp.float32), compiler_options=options)(x, w))
        except Exception as e:  # noqa: BLE001
            report[label] = {"error": failure(e)}
            continue
        differ = (np.isnan(out) != np.isnan(ref)) | (np.isinf(out) != np.isinf(ref))
        fin = np.isfinite(ref) & np.isfinite(out)
        report[label] = {
            "nonfinite_differ_at": np.argwhere(differ).tolist()[:8],
            "finite_rel_err": rel_err(out[fin], ref[fin]),
        }
    return report


def pick(variants: dict[str, Variant], argv: list[str]) -> dict[str, Variant]:
    """The variants named by ``--variants a,b`` in ``argv`` (all of them without it), in that order."""
    if "--variants" not in argv:
        return variants
    names = argv[argv.index("--variants") + 1].split(",")
    unknown = [name for name in names if name not in variants]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected some of {list(variants)}")
    return {name: variants[name] for name in names}


def main() -> None:
    results = {"env": environment(), "cells": []}
    chosen = pick(VARIANTS, sys.argv)
    results["edge"] = edge_check(chosen)
    print(results["env"], "\nedge:", results["edge"], flush=True)
    sweep(results, "xla_fused_dequant", CELLS, chosen)


if __name__ == "__main__":
    main()
