"""Where the hopper backend's M > 64 path spends its time, piece by piece (device time, one GPU).

Pieces of ``hopper.matmul`` for M > 64 (the one-pass Pallas activation quantize-and-decode,
the Pallas weight decode, the bf16 cuBLAS GEMM) next to the XLA alternatives they replaced
(Pallas quantize then XLA decode; XLA weight decode), the whole path and the bf16
``jnp.dot`` baseline. Decodes are reported as TB/s against the copy bandwidth measured in
the same run, and checked bit for bit against ``mxfp8_xla.dequantize``.

``bound_vs_bf16`` is bf16 time / (activation pass + decoded-operand dot): the best ratio any
design can reach that keeps the activation's quantize pass separate and multiplies the
exact operands at the decoded-operand cuBLAS rate (i.e. one that folds the weight decode
into the GEMM for free).

Usage: python benchmarks/hopper_breakdown.py [--all] ; JSON to $OUT/hopper_breakdown.json.
``--all``: the five Llama-3-8B shapes at M = 2048 and 4096.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import copy_bandwidth, device_time, environment, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402

SETS = 4
DN = (((1,), (1,)), ((), ()))
CASES = [(14336, 4096, 2048), (28672, 4096, 4096), (4096, 14336, 2048)]  # smaller pieces are dispatch-bound
SHAPES = [(6144, 4096), (4096, 4096), (14336, 4096), (28672, 4096), (4096, 14336)]


def main() -> None:
    env = environment()
    bw = copy_bandwidth()
    print(f"{env}  copy {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    cases = [(n, k, m) for m in (2048, 4096) for n, k in SHAPES] if "--all" in sys.argv else CASES
    for n, k, m in cases:
        keys = jax.random.split(jax.random.key(n + k + m), 2 * SETS)
        ws = [jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02 for i in range(SETS)]
        wqs = [mx.quantize(w) for w in ws]
        xs = [jax.random.normal(keys[SETS + i], (m, k), jnp.bfloat16) for i in range(SETS)]
        xqs = [hopper.quantize_activations(x) for x in xs]
        xds = [hopper.decode_operand(x) for x in xs]
        wds = [hopper.decode_operand(q) for q in wqs]
        pieces = {
            "bf16_dot": (
                lambda x, w: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16),
                list(zip(xs, ws, strict=True)),
            ),
            "hopper_total": (lambda x, q: mx.mxfp8_matmul(x, q, backend="hopper"), list(zip(xs, wqs, strict=True))),
            "act_quantize": (hopper.quantize_activations, [(x,) for x in xs]),
            "act_decode_xla": (lambda q: mx.dequantize(q, jnp.bfloat16), [(q,) for q in xqs]),
            "act_fake_quantize": (hopper.decode_operand, [(x,) for x in xs]),
            "weight_decode_xla": (lambda q: mx.dequantize(q, jnp.bfloat16), [(q,) for q in wqs]),
            "weight_decode_pallas": (hopper.decode_operand, [(q,) for q in wqs]),
            "decoded_dot": (
                lambda a, b: jax.lax.dot_general(a, b, DN, preferred_element_type=jnp.bfloat16),
                list(zip(xds, wds, strict=True)),
            ),
        }
        row = {"n": n, "k": k, "m": m}
        same = bool(jnp.array_equal(wds[0], mx.dequantize(wqs[0], jnp.bfloat16))) and bool(
            jnp.array_equal(xds[0], mx.dequantize(mx.quantize(xs[0]), jnp.bfloat16))
        )
        for name, (fn, sets) in pieces.items():
            row[name + "_us"] = device_time(fn, sets) * 1e6
        row["weight_decode_pallas_tb_s"] = n * k * (1 + 1 / 32 + 2) / row["weight_decode_pallas_us"] / 1e6
        row["act_fake_quantize_tb_s"] = m * k * (2 + 2) / row["act_fake_quantize_us"] / 1e6
        row["pallas_decodes_bit_exact"] = same
        row["bound_vs_bf16"] = row["bf16_dot_us"] / (row["act_fake_quantize_us"] + row["decoded_dot_us"])
        rows.append(row)
        print(
            f"N={n:6d} K={k:6d} M={m:5d} "
            + " ".join(f"{key[:-3]} {v:7.1f}" for key, v in row.items() if key.endswith("_us"))
            + f" | pallas weight decode {row['weight_decode_pallas_tb_s']:.2f} TB/s,"
            + f" act fake-quantize {row['act_fake_quantize_tb_s']:.2f} TB/s, bit-exact: {same},"
            + f" total {row['bf16_dot_us'] / row['hopper_total_us']:.2f}x, bound {row['bound_vs_bf16']:.2f}x",
            flush=True,
        )
        write_json("hopper_breakdown.json", {"env": env, "copy_bytes_per_s": bw, "rows": rows})


if __name__ == "__main__":
    main()
