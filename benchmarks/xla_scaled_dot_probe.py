"""Probe: XLA's own block-scaled dot (``jax.lax.scaled_dot``) for MXFP8, against bf16 and the shipped backend.

``jax.lax.scaled_dot`` takes E4M3 operands and E8M0 (``float8_e8m0fnu``) scales per 32 elements of K,
MXFP8 exactly, and lowers to the ``xla.scaled_dot`` composite. XLA:GPU turns that into its
``scaled-dot`` op in a Triton GEMM fusion, whose ``dot_scaled`` decodes the operands inside the
kernel on GPUs without native MX MMAs, such as Hopper (``--xla_gpu_experimental_scaled_dot_with_triton``
is on by default in jax 0.11.2: setting it changed neither the HLO nor the times). XLA's autotuner
then times that fusion (num_stages 1, block_m >= 128 only, per XLA's sources) against a "fission"
candidate: the scaled-dot expanded into a decode to bf16 in HBM plus cuBLAS, and keeps the faster.

Forms (the weight ``[N, K]`` keeps its bytes; its uint8 scales are bitcast to ``float8_e8m0fnu``,
the same encoding):
  ``mx_mx``   the activation quantized by the shipped one-pass Pallas kernel, both operands scaled
  ``bf16_mx`` the activation quantized and decoded to exact bf16 by the shipped Pallas pass, unscaled
Variants compile ``mx_mx`` with XLA options (per compilation; the baselines keep the defaults):
  ``mx_mx_nocublas`` ``--xla_gpu_cublas_fallback=false``: the Triton fusion, whatever the autotuner measured
  ``mx_mx_configs``  that, and the autotuner choosing among the tilings in ``xla_scaled_dot_configs.txtpb``
                     (small block_m, pipelined loads) instead of XLA's own

Each cell: loop time end to end (raw bf16 activation in, bf16 out) against bf16 ``jnp.dot`` and the
shipped ``hopper`` backend in the same run; the float32-output error against emulation; whether the
optimized HLO's GEMM reads the fp8 weight itself (``fused``) or a decoded copy in HBM. Plus the
edge weight (scale bytes 0, 1, 254, 255) NaN for NaN against emulation.

Usage (device): ``PYTHONPATH=. python3 benchmarks/xla_scaled_dot_probe.py [--variants a,b]``. JSON and
the HLO of each variant at the first cell to ``$OUT``.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import environment  # noqa: E402
from xla_fused_dequant_probe import CELLS, DN, NO_CUBLAS, edge_check, pick, sweep  # noqa: E402

from mxfp8_xla import MXArray  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402

FORMS = ("mx_mx", "bf16_mx")
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xla_scaled_dot_configs.txtpb")


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


def variants() -> dict:
    """Label -> (product, XLA compiler options) for :func:`xla_fused_dequant_probe.sweep`."""
    out = {form: (functools.partial(product, form=form), {}) for form in FORMS}
    out["mx_mx_nocublas"] = (functools.partial(product, form="mx_mx"), NO_CUBLAS)
    out["mx_mx_configs"] = (
        functools.partial(product, form="mx_mx"),
        NO_CUBLAS | {"xla_gpu_gemm_autotuner_override_file": CONFIGS},
    )
    return out


def main() -> None:
    results = {"env": environment(), "cells": []}
    chosen = pick(variants(), sys.argv)
    results["edge"] = edge_check(chosen)
    print(results["env"], "\nedge:", results["edge"], flush=True)
    sweep(results, "xla_scaled_dot", CELLS, chosen)


if __name__ == "__main__":
    main()
