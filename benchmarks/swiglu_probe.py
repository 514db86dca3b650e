"""Probe: the library's SwiGLU GEMV (``cuda_gemv.swiglu_rows``) against XLA's SwiGLU and the one-row GEMV.

In the Llama decode at batch 1 (fourteenth session's profile, ``llama_step_profile_fourteenth_b1_h200.log``) each
MLP's ``silu(gate) * up`` is an XLA launch of its own between the gate and up projection and the down projection
(``loop_multiply_fusion_2``, 6.7 us a step over four blocks). The SwiGLU kernel (``gemv.cu``, ``swiglu_chunk``) takes
the gate and up projection's row ``[gate, up]`` and computes :func:`mxfp8_xla.glu.swiglu` as it loads it, in the down
projection's launch. Parts, each for bf16 and float32 rows (``--dtypes``):

1. ``numerics``: the quantized activation the kernel multiplies, read back through an identity weight
   (``mosaic_sweep.identity_weight``, as ``gemv_norm_probe.py`` does), against ``quantize(glu.swiglu_halves(gate_up))``
   computed by XLA on the GPU, element by element: for bf16 every finite bf16 gate value (65,280, in launches of
   16,384), for float32 random finite bit patterns and normal draws; ``up`` uniform in [-1, 1], so that no product
   overflows. XLA's ``glu.swiglu`` with and without excess precision, bit for bit. At (4096, 14336) the float32
   product against the library's GEMV on XLA's SwiGLU (bit for bit) and against emulation; an Inf, a NaN and a -Inf
   gate, and an Inf up (every output NaN).
2. ``timing`` at (4096, 14336), the Llama-3-8B down projection, us a call: bf16 (``nn.silu(gate) * up`` and
   ``jnp.dot`` on the weight stored ``[N, K]``), MXFP8 unfused (XLA's ``glu.swiglu``, then the library's GEMV), the
   fused kernel, and the GEMV alone.
3. ``decode``: ``bench_llama.py``'s 4-block Llama-3-8B decode (fused projections and norms) at ``--batches``, bf16
   ``[N, K]``, MXFP8 and MXFP8 with ``fuse_swiglu``, in ``--rounds`` interleaved rounds (each model's step per round).

Run on the device: ``PYTHONPATH=. python3 benchmarks/swiglu_probe.py [--dtypes bf16,f32] [--parts
numerics,timing,decode] [--batches 1,8] [--rounds 2]``; JSON to ``$OUT/swiglu_probe.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mosaic_sweep import dequant_bf16, identity_weight, operands, reference, rel_err  # noqa: E402
from timing import environment, failure, loop_time, write_json  # noqa: E402

from mxfp8_xla import dequantize, glu, quantize  # noqa: E402
from mxfp8_xla.backends import cuda_gemv  # noqa: E402

DOWN = (4096, 14336)  # Llama-3-8B's down projection [N, K]
CHUNK = 16384  # gate values a launch: the one-row kernel's largest K
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}
STRICT = {"xla_allow_excess_precision": False}


def finite_bf16_values() -> np.ndarray:
    """Every finite bf16 value (65,280), as float32."""
    bits = np.arange(1 << 16, dtype=np.uint32)
    values = (bits << 16).view(np.float32)
    return values[np.isfinite(values)]


def random_finite_f32(count: int, seed: int) -> np.ndarray:
    """``count`` float32 values with uniformly random bit patterns, non-finite ones dropped and redrawn."""
    rng = np.random.default_rng(seed)
    out = np.empty(0, np.float32)
    while out.size < count:
        v = rng.integers(0, 1 << 32, size=count, dtype=np.uint64).astype(np.uint32).view(np.float32)
        out = np.concatenate([out, v[np.isfinite(v)]])
    return out[:count]


def gate_chunks(dtype: jnp.dtype) -> list[np.ndarray]:
    """The gate values, ``CHUNK`` a launch (the last padded with zeros)."""
    if dtype == jnp.bfloat16:
        values = finite_bf16_values()
    else:
        rng = np.random.default_rng(1)
        draws = [rng.standard_normal(CHUNK).astype(np.float32) * s for s in (1.0, 8.0)]
        values = np.concatenate([random_finite_f32(2 * CHUNK, 0), *draws])
    padded = np.zeros(-(-values.size // CHUNK) * CHUNK, np.float32)
    padded[: values.size] = values
    return list(padded.reshape(-1, CHUNK))


def gate_up_row(gate: np.ndarray, dtype: jnp.dtype, seed: int) -> jax.Array:
    """``[1, 2 K]``: ``gate`` then ``up`` uniform in [-1, 1] (full float32 mantissas before the cast)."""
    up = np.random.default_rng(100 + seed).uniform(-1, 1, gate.size).astype(np.float32)
    return jnp.asarray(np.concatenate([gate, up])[None], dtype)


def down_operands(dtype: jnp.dtype, copies: int | None = None) -> list[tuple[jax.Array, jax.Array, object]]:
    """``(gate_up [1, 2K], gate [1, K], w [N, K])`` sets at :data:`DOWN` (``mosaic_sweep.operands``' draws; ``up`` is
    the gate reversed)."""
    return [
        (jnp.concatenate([x, x[:, ::-1]], axis=-1).astype(dtype), x.astype(dtype), w)
        for x, w in operands(*DOWN, 1, copies=copies)
    ]


def fused(gate_up, w, out_dtype=jnp.bfloat16):
    """``swiglu(gate_up) @ w.T``: the library's SwiGLU kernel, one launch."""
    return cuda_gemv.swiglu_rows(gate_up, w, out_dtype)


def unfused(gate_up, w, out_dtype=jnp.bfloat16):
    """XLA's SwiGLU, then the library's GEMV: what the decode runs without the fused kernel."""
    return cuda_gemv.matmul_rows(glu.swiglu_halves(gate_up), w, out_dtype)


def numerics(results: dict, name: str) -> None:
    dtype = DTYPES[name]
    row = {"activation elements compared": 0, "activation elements differing": 0, "first differences": []}
    eye = identity_weight(CHUNK)
    run = jax.jit(lambda gu, w: fused(gu, w, jnp.float32))
    want_fn = jax.jit(lambda gu: dequantize(quantize(glu.swiglu_halves(gu)), jnp.float32))
    strict_fn = jax.jit(glu.swiglu_halves, compiler_options=STRICT)
    excess_differs = 0
    for i, gate in enumerate(gate_chunks(dtype)):
        gu = gate_up_row(gate, dtype, i)
        got, want = np.asarray(run(gu, eye)).ravel(), np.asarray(want_fn(gu)).ravel()
        differ = np.flatnonzero(~((got == want) | (np.isnan(got) & np.isnan(want))))
        row["activation elements compared"] += got.size
        row["activation elements differing"] += int(differ.size)
        g = np.asarray(gu, np.float32).ravel()
        row["first differences"] += [
            [float(g[j]), float(g[CHUNK + j]), float(got[j]), float(want[j])] for j in differ[:4]
        ][: max(0, 8 - len(row["first differences"]))]
        default, strict = np.asarray(jax.jit(glu.swiglu_halves)(gu)), np.asarray(strict_fn(gu))
        excess_differs += int(np.sum(default.view(np.uint8) != strict.view(np.uint8)))
    row["XLA's swiglu bytes differing with and without excess precision"] = excess_differs
    ((gu, _, w),) = down_operands(dtype, copies=1)
    y = np.asarray(jax.jit(lambda gu, w: fused(gu, w, jnp.float32))(gu, w))
    library = np.asarray(jax.jit(lambda gu, w: unfused(gu, w, jnp.float32))(gu, w))
    row["product outputs equal to the library GEMV on XLA's SwiGLU (of n)"] = int(np.sum(y == library))
    row["product rel_err vs emulation"] = rel_err(y, reference(jax.jit(glu.swiglu_halves)(gu), w))
    for label, at in (("inf gate", (0, 7, np.inf)), ("nan gate", (0, 7, np.nan)), ("-inf gate", (0, 7, -np.inf))):
        bad = gu.at[at[0], at[1]].set(at[2])
        row[f"{label}: every output NaN"] = bool(np.isnan(np.asarray(jax.jit(fused)(bad, w), np.float32)).all())
    bad = gu.at[0, DOWN[1] + 7].set(np.inf)
    row["inf up: every output NaN"] = bool(np.isnan(np.asarray(jax.jit(fused)(bad, w), np.float32)).all())
    results[f"numerics {name}"] = row
    print(f"numerics {name}: {row}", flush=True)


def timing(results: dict, name: str) -> None:
    dtype = DTYPES[name]
    sets = down_operands(dtype)
    bf16_sets = [(gu.astype(jnp.bfloat16), dequant_bf16(w)) for gu, _, w in sets]

    def bf16_mlp(gu, wb):
        gate, up = jnp.split(gu, 2, axis=-1)
        return jnp.dot(nn.silu(gate) * up, wb.T)

    row = {
        "bf16": loop_time(bf16_mlp, bf16_sets),
        "unfused": loop_time(lambda gu, x, w: unfused(gu, w), sets),
        "fused": loop_time(lambda gu, x, w: fused(gu, w), sets),
        "gemv alone": loop_time(lambda gu, x, w: cuda_gemv.matmul_rows(x, w, jnp.bfloat16), sets),
    }
    row = {key: t * 1e6 for key, t in row.items()}
    results[f"timing {name} {DOWN}"] = row
    print(
        f"timing {name} {DOWN}: "
        + ", ".join(f"{key} {v:.1f} us" for key, v in row.items())
        + f"; bf16 / unfused {row['bf16'] / row['unfused']:.2f}x, bf16 / fused {row['bf16'] / row['fused']:.2f}x",
        flush=True,
    )


def decode(results: dict, batches: list[int], rounds: int) -> None:
    import bench_llama

    base = bench_llama.block_config(4)
    models = {
        "bf16_nk": dict(quantized=False, bf16_layout="nk"),
        "mxfp8": dict(quantized=True, bf16_layout="kn", fuse_norms=True),
        "mxfp8_swiglu": dict(quantized=True, bf16_layout="kn", fuse_norms=True, fuse_swiglu=True),
    }
    built = {name: bench_llama.build_model(base, fuse_projections=True, **kw) for name, kw in models.items()}
    for r in range(rounds):
        for batch in batches:
            steps = {name: bench_llama.decode_step(cfg, params, batch) * 1e3 for name, (cfg, params) in built.items()}
            results[f"decode round {r} batch {batch} (ms a step)"] = steps
            ratios = {name: steps["bf16_nk"] / ms for name, ms in steps.items() if name != "bf16_nk"}
            print(
                f"decode round {r} batch {batch}: "
                + ", ".join(f"{name} {ms:.3f} ms" for name, ms in steps.items())
                + "; "
                + ", ".join(f"{name} {x:.3f}x" for name, x in ratios.items()),
                flush=True,
            )
            write_json("swiglu_probe.json", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="bf16,f32", help="comma-separated gate_up dtypes: bf16, f32")
    parser.add_argument("--parts", default="numerics,timing,decode", help="comma-separated: numerics, timing, decode")
    parser.add_argument("--batches", default="1,8", help="decode batch sizes")
    parser.add_argument("--rounds", type=int, default=2, help="decode rounds")
    args = parser.parse_args()
    results = {"environment": environment()}
    print(results["environment"], flush=True)
    parts = args.parts.split(",")
    for part in (p for p in parts if p != "decode"):
        for name in args.dtypes.split(","):
            try:
                {"numerics": numerics, "timing": timing}[part](results, name)
            except Exception as e:  # noqa: BLE001
                results[f"{part} {name}"] = {"error": failure(e)}
                print(f"{part} {name}: {failure(e)}", flush=True)
            write_json("swiglu_probe.json", results)
    if "decode" in parts:
        decode(results, [int(b) for b in args.batches.split(",")], args.rounds)
