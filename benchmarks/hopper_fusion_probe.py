"""Where the hopper backend loses time end to end, on one GPU (device time).

Small M: activation quantized by its own Pallas launch, then the GEMM kernel
(``preq``), against the GEMM kernel quantizing the activation tile itself
(``fused``), with and without padding the rows to the kernel's 16-row tile.
Large M: cuBLAS writing float32 then XLA casting (``f32_out``) against cuBLAS
writing ``bf16`` directly (float32 accumulation either way).
Every variant's float32 result is compared with the emulation backend.

Usage: python benchmarks/hopper_fusion_probe.py ; JSON to $OUT/hopper_fusion_probe.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import device_time, environment, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402

SETS = 8
WEIGHT_COPIES = 4
DN = (((1,), (1,)), ((), ()))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def padded(x, wq, out_dtype):
    m = x.shape[0]
    xp = jnp.pad(x, ((0, 16 - m), (0, 0))) if m < 16 else x
    return hopper.matmul_2d(xp, wq, out_dtype)[:m]


def large(x, wq, out_dtype, dot_dtype):
    xd = mx.dequantize(hopper.quantize_activations(x), jnp.bfloat16)
    wd = mx.dequantize(wq, jnp.bfloat16)
    return jax.lax.dot_general(xd, wd, DN, preferred_element_type=dot_dtype).astype(out_dtype)


SMALL = {
    "preq": lambda x, wq, dt: hopper.matmul_2d(hopper.quantize_activations(x), wq, dt),
    "fused": lambda x, wq, dt: hopper.matmul_2d(x, wq, dt),
    "fused_pad16": padded,
}
LARGE = {
    "f32_out": lambda x, wq, dt: large(x, wq, dt, jnp.float32),
    "bf16_out": lambda x, wq, dt: large(x, wq, dt, dt),
}


def main() -> None:
    env = environment()
    print(env, flush=True)
    rows = []
    cases = [(n, k, m) for n, k in [(14336, 4096), (4096, 14336), (28672, 4096)] for m in (1, 8, 16, 32, 64)]
    cases += [(14336, 4096, 2048), (28672, 4096, 4096), (4096, 14336, 2048)]
    for n, k, m in cases:
        keys = jax.random.split(jax.random.key(n + k + m), WEIGHT_COPIES + SETS)
        ws = [jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02 for i in range(WEIGHT_COPIES)]
        wqs = [mx.quantize(w) for w in ws]
        xs = [jax.random.normal(keys[WEIGHT_COPIES + i], (m, k), jnp.bfloat16) for i in range(SETS)]
        ref = mx.mxfp8_matmul(xs[0], wqs[0], out_dtype=jnp.float32, backend="emulation")
        bf16 = device_time(
            lambda x, w: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16),
            [(xs[i], ws[i % WEIGHT_COPIES]) for i in range(SETS)],
        )
        row = {"n": n, "k": k, "m": m, "bf16_us": bf16 * 1e6}
        line = f"N={n:6d} K={k:6d} M={m:5d} bf16 {bf16 * 1e6:7.1f} us"
        for name, fn in (SMALL if m <= 64 else LARGE).items():
            try:
                err = rel(jax.jit(fn, static_argnums=2)(xs[0], wqs[0], jnp.float32), ref)
                t = device_time(
                    lambda x, wq, fn=fn: fn(x, wq, jnp.bfloat16),
                    [(xs[i], wqs[i % WEIGHT_COPIES]) for i in range(SETS)],
                )
            except Exception as e:  # a probe: report and go on
                row[name] = {"error": repr(e)[:300]}
                line += f" | {name} FAILED {repr(e)[:120]}"
                continue
            row[name] = {"us": t * 1e6, "ratio": bf16 / t, "rel_err_vs_emulation": err}
            line += f" | {name} {t * 1e6:6.1f} us {bf16 / t:.2f}x err {err:.1e}"
        print(line, flush=True)
        rows.append(row)
        write_json("hopper_fusion_probe.json", {"env": env, "rows": rows})


if __name__ == "__main__":
    main()
