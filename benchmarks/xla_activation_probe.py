"""Probe: the activation pass of 3-16 rows as XLA ops (``mxfp8_xla.quantize``) instead of the Pallas kernel.

At batch 8 the Llama decode step runs 16 activation launches (``mxfp8_quantize`` before each Triton GEMM,
``mxfp8_fake_quantize`` before each Mosaic one), about 25 us of a 525 us step (docs/benchmark_log.md, "RMSNorm inside
the decode step"), each behind an XLA kernel that produced its input (an RMSNorm, the SwiGLU, the attention output).
Written as XLA ops, the quantization is bit-identical (it is the library's reference) and XLA may fuse it into those
producers, saving launches. This times the decode of ``bench_llama.py`` (4 blocks at Llama-3-8B dimensions,
``--fuse-projections --fuse-norms``) at each batch, with the backend as shipped and with ``hopper.quantize_activations``
and ``hopper.decode_operand`` (on a raw activation) replaced by XLA's ``quantize`` / ``dequantize(quantize(x))``,
alternating ``--rounds`` times in one process, bf16 ``[N, K]`` alongside; and checks that both variants generate the
same tokens.

What an H200 answered (fourteenth session, results/xla_activation_probe_h200.*): the same tokens, no Pallas activation
kernel left in the lowered decode, and a slower step: 0.539-0.548 against 0.517-0.520 ms at batch 8, 0.568-0.574
against 0.546-0.548 at batch 16.

Run on the device: ``PYTHONPATH=. python3 benchmarks/xla_activation_probe.py [--batches 8] [--rounds 2]``; JSON to
``$OUT/xla_activation_probe.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llama import block_config, build_model, decode_prompt, decode_step  # noqa: E402
from timing import environment, write_json  # noqa: E402

from examples.llama import generate  # noqa: E402
from mxfp8_xla import MXArray, dequantize, quantize  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402

_shipped_decode_operand = hopper.decode_operand


def xla_decode_operand(x: jax.Array | MXArray, rows: int | None = None) -> jax.Array:
    """``hopper.decode_operand`` with a raw activation quantized and decoded by XLA ops."""
    if isinstance(x, MXArray):
        return _shipped_decode_operand(x, rows)
    out = dequantize(quantize(x), jnp.bfloat16)
    return out if rows is None else jnp.pad(out, ((0, rows - out.shape[0]), (0, 0)))


@contextlib.contextmanager
def activation_pass(variant: str):
    """``shipped`` (the Pallas kernels) or ``xla`` (the library's ``quantize`` as XLA ops), traced afresh."""
    jax.clear_caches()
    if variant == "shipped":
        yield
        return
    with (
        mock.patch.object(hopper, "quantize_activations", quantize),
        mock.patch.object(hopper, "decode_operand", xla_decode_operand),
    ):
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="small dimensions: a CPU smoke test of the script")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    base = block_config(4, args.tiny)
    backend = "emulation" if args.tiny else "auto"
    mx_cfg, mx_params = build_model(
        base, quantized=True, bf16_layout="kn", fuse_projections=True, fuse_norms=True, backend=backend
    )
    bf_cfg, bf_params = build_model(base, quantized=False, bf16_layout="nk", fuse_projections=True)
    out = {"env": environment(), "rows": []}
    for batch in batches:
        prompt = decode_prompt(mx_cfg.vocab_size, batch)
        tokens = {}
        for variant in ("shipped", "xla"):
            with activation_pass(variant):
                tokens[variant] = np.asarray(generate(mx_cfg, mx_params, prompt, max_new_tokens=16))
                text = (
                    jax.jit(lambda p, t: generate(mx_cfg, p, t, max_new_tokens=16)).lower(mx_params, prompt).as_text()
                )
                launches = {name: text.count(f'"{name}"') for name in ("mxfp8_quantize", "mxfp8_fake_quantize")}
                print(f"batch {batch}, {variant}: Pallas activation kernels in the lowered decode: {launches}")
        same = bool(np.array_equal(tokens["shipped"], tokens["xla"]))
        print(f"batch {batch}: the two activation passes generate the same tokens: {same}", flush=True)
        for r in range(args.rounds):
            row = {"batch": batch, "round": r, "same_tokens": same}
            row["bf16_nk_ms"] = decode_step(bf_cfg, bf_params, batch) * 1e3
            for variant in ("shipped", "xla"):
                with activation_pass(variant):
                    row[f"mxfp8_{variant}_ms"] = decode_step(mx_cfg, mx_params, batch) * 1e3
            print(
                f"batch {batch} round {r}: bf16 {row['bf16_nk_ms']:.3f} ms/step, MXFP8 shipped "
                f"{row['mxfp8_shipped_ms']:.3f} ({row['bf16_nk_ms'] / row['mxfp8_shipped_ms']:.3f}x), MXFP8 XLA "
                f"activation {row['mxfp8_xla_ms']:.3f} ({row['bf16_nk_ms'] / row['mxfp8_xla_ms']:.3f}x)",
                flush=True,
            )
            out["rows"].append(row)
            write_json("xla_activation_probe.json", out)


if __name__ == "__main__":
    main()
