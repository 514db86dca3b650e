"""Probe: XLA's own block-scaled dot (``jax.lax.scaled_dot``) for MXFP8, against bf16 and the shipped backend.

``jax.lax.scaled_dot`` takes E4M3 operands and E8M0 (``float8_e8m0fnu``) scales per 32 elements of K,
MXFP8 exactly, and lowers to the ``xla.scaled_dot`` composite. XLA:GPU turns that into its
``scaled-dot`` op; with ``--xla_gpu_experimental_scaled_dot_with_triton`` (its default differs across
XLA versions) the op enters XLA's Triton GEMM fusion, whose ``dot_scaled`` decodes the operands inside
the kernel on GPUs without native MX MMAs, such as Hopper; otherwise XLA expands it into a decode and
a plain dot, which ``xla_fused_dequant_probe.py`` found writing the decoded weight to HBM. Written
as plain dots, the decode never fused (that probe); this asks whether the scaled-dot op does.

Forms (the weight ``[N, K]`` keeps its bytes; its uint8 scales are bitcast to ``float8_e8m0fnu``,
the same encoding):
  ``mx_mx``   the activation quantized by the shipped one-pass Pallas kernel, both operands scaled
  ``bf16_mx`` the activation quantized and decoded to exact bf16 by the shipped Pallas pass, unscaled

Each cell: loop time end to end (raw bf16 activation in, bf16 out) against bf16 ``jnp.dot`` and the
shipped ``hopper`` backend in the same run; the float32-output error against emulation; whether the
optimized HLO's GEMM reads the fp8 weight itself (``fused``) or a decoded copy in HBM. Plus the
edge weight (scale bytes 0, 1, 254, 255) NaN for NaN against emulation.

Usage (device): ``PYTHONPATH=. python3 benchmarks/xla_scaled_dot_probe.py [--triton]``; ``--triton`` adds
``--xla_gpu_experimental_scaled_dot_with_triton=true`` to ``XLA_FLAGS`` before JAX starts. JSON and
the HLO of each form at the first cell to ``$OUT``.
"""

from __future__ import annotations

import os
import sys

TRITON_FLAG = "--xla_gpu_experimental_scaled_dot_with_triton=true"
if __name__ == "__main__" and "--triton" in sys.argv:  # XLA reads its flags once, when the backend starts
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRITON_FLAG}".strip()

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import edge_operands, rel_err  # noqa: E402
from timing import environment, failure  # noqa: E402
from xla_fused_dequant_probe import sweep  # noqa: E402

from mxfp8_xla import MXArray  # noqa: E402
from mxfp8_xla.backends import emulation, hopper  # noqa: E402

FORMS = ("mx_mx", "bf16_mx")
CELLS = tuple(((14336, 4096), m) for m in (16, 1, 256, 2048)) + tuple(((4096, 14336), m) for m in (16, 1, 2048))
DN = (((1,), (1,)), ((), ()))


def e8m0(scale: jax.Array) -> jax.Array:
    """uint8 E8M0 scale bytes as ``float8_e8m0fnu`` (a bitcast: the encodings are the same)."""
    return jax.lax.bitcast_convert_type(scale, jnp.float8_e8m0fnu)


def product(
    x: jax.Array,
    w: MXArray,
    form: str,
    out_dtype=jnp.bfloat16,
    quantize=hopper.quantize_activations,
    decode=hopper.decode_operand,
) -> jax.Array:
    """``x [M, K]`` raw -> ``[M, N]`` by ``jax.lax.scaled_dot`` in ``form``."""
    if form == "mx_mx":
        xq = quantize(x)
        lhs, lhs_scale = xq.data, e8m0(xq.scale)
    elif form == "bf16_mx":
        lhs, lhs_scale = decode(x), None
    else:
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
    return jax.lax.scaled_dot(
        lhs,
        w.data,
        lhs_scale=lhs_scale,
        rhs_scale=e8m0(w.scale),
        dimension_numbers=DN,
        preferred_element_type=out_dtype,
    )


def edge_check() -> dict:
    """Each form's NaN and infinity positions against emulation on the edge weight, and its finite error."""
    x, w = edge_operands()
    ref = np.asarray(emulation.matmul(hopper.quantize_activations(x), w, jnp.float32))
    report = {}
    for form in FORMS:
        try:
            out = np.asarray(jax.jit(functools.partial(product, form=form, out_dtype=jnp.float32))(x, w))
        except Exception as e:  # noqa: BLE001
            report[form] = {"error": failure(e)}
            continue
        differ = (np.isnan(out) != np.isnan(ref)) | (np.isinf(out) != np.isinf(ref))
        fin = np.isfinite(ref) & np.isfinite(out)
        report[form] = {
            "nonfinite_differ_at": np.argwhere(differ).tolist()[:8],
            "finite_rel_err": rel_err(out[fin], ref[fin]),
        }
    return report


def main() -> None:
    results = {"env": environment(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "cells": []}
    results["edge"] = edge_check()
    print(results["env"], results["xla_flags"], "\nedge:", results["edge"], flush=True)
    sweep(results, "xla_scaled_dot", CELLS, FORMS, product)


if __name__ == "__main__":
    main()
