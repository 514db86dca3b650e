"""The examples/llama model at Llama-3-8B layer dimensions: MXFP8 vs bf16 decode and prefill.

A few blocks with random weights (hidden 4096, MLP 14336, 32 query / 8 KV heads of 128),
a small vocabulary (1024) so that the unquantized embedding and head do not hide the
blocks, KV cache under jit. Decode time per token is the slope between two generation
lengths (prefill cancels out); prefill is a forward pass over 2048 tokens.

The bf16 baseline runs in both weight layouts by default: ``nn.Dense`` (``kernel [K, N]``, what a Flax model
usually has) and ``DenseNK`` (``[N, K]``, the checkpoint's and the MXFP8 layers' orientation); on an H200 XLA
multiplies one row by the first layout's k/v kernels 4x slower (``bf16_layout_probe.py``).

``--fuse-projections`` runs every model with q/k/v and gate/up each as one projection
(``LlamaConfig.fuse_projections``); ``--fuse-norms`` (with it) the MXFP8 model's residual adds and RMSNorms inside its
projections (``LlamaConfig.fuse_norms``).

Usage: python benchmarks/bench_llama.py [--layers 4] [--batches 1,8,32] [--bf16-layouts kn,nk] [--no-prefill]
[--fuse-projections [--fuse-norms]]; JSON to $OUT/bench_llama.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import environment, int_list, positive_int, write_json  # noqa: E402

from examples.llama import Llama, LlamaConfig, forward, generate  # noqa: E402
from mxfp8_xla.backends import BACKENDS  # noqa: E402

PROMPT = 64
SHORT, LONG = 16, 80


def elapsed(fn) -> float:
    """Seconds of one call of ``fn``, waited on."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def wall(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    return statistics.median(elapsed(fn) for _ in range(repeats))


def block_config(layers: int, tiny: bool = False) -> dict:
    """``LlamaConfig`` keywords for the dimensions and dtypes of ``layers`` Llama-3-8B blocks, or small dimensions
    with ``tiny`` (a CPU smoke test); the caller adds how to run them (``quantized``, ``backend``, ...)."""
    base = dict(
        vocab_size=1024,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=500000.0,
        dtype=jnp.bfloat16,
        param_dtype=jnp.bfloat16,
    )
    if tiny:
        base.update(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    return base


def build_model(
    base: dict,
    *,
    quantized: bool,
    bf16_layout: str,
    fuse_projections: bool,
    backend: str = "auto",
    fuse_norms: bool = False,
) -> tuple[LlamaConfig, dict]:
    """``(cfg, params)`` of the blocks ``base`` describes (:func:`block_config`): MXFP8 or bf16 (weights in
    ``bf16_layout``), random weights from key 0; ``fuse_norms`` applies to the MXFP8 model only."""
    cfg = LlamaConfig(
        **base,
        quantized=quantized,
        backend=backend,
        bf16_layout=bf16_layout,
        fuse_projections=fuse_projections,
        fuse_norms=fuse_norms and quantized,
    )
    params = jax.jit(Llama(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return cfg, params


def decode_prompt(vocab_size: int, batch: int) -> jax.Array:
    """The ``[batch, PROMPT]`` random token ids every decode measurement starts from."""
    return jax.random.randint(jax.random.key(batch), (batch, PROMPT), 0, vocab_size)


def decode_step(cfg: LlamaConfig, params, batch: int, rounds: int = 3) -> float:
    """Seconds per generated token at ``batch``: the slope between ``SHORT`` and ``LONG`` new tokens, each length's
    fastest of ``rounds`` interleaved calls (load on the host only adds time; medians of separate runs of each length
    until the twenty-ninth session, which on a loaded CPU once gave a negative slope)."""
    prompt = decode_prompt(cfg.vocab_size, batch)
    calls = {n: (lambda n=n: generate(cfg, params, prompt, max_new_tokens=n)) for n in (SHORT, LONG)}
    for call in calls.values():
        jax.block_until_ready(call())  # compile + warm up
    samples = {n: [] for n in calls}
    for _ in range(rounds):
        for n, call in calls.items():
            samples[n].append(elapsed(call))
    return (min(samples[LONG]) - min(samples[SHORT])) / (LONG - SHORT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=positive_int, default=4)
    ap.add_argument("--backend", default="auto", choices=["auto", *sorted(BACKENDS)])
    ap.add_argument("--batches", type=int_list, default=[1, 8, 32], help="comma-separated decode batch sizes")
    ap.add_argument("--tiny", action="store_true", help="small dimensions: a CPU smoke test of the script")
    ap.add_argument(
        "--bf16-layouts", default="kn,nk", help="bf16 baselines: kn = nn.Dense [K, N], nk = DenseNK [N, K] (as MXFP8)"
    )
    ap.add_argument("--no-prefill", action="store_true", help="decode only")
    ap.add_argument(
        "--fuse-projections", action="store_true", help="every model with qkv_proj and gate_up_proj (one call each)"
    )
    ap.add_argument(
        "--fuse-norms", action="store_true", help="the MXFP8 model's norms inside its projections (with the above)"
    )
    floats = ("float32", "bfloat16", "float16")
    ap.add_argument("--dtype", default="bfloat16", choices=floats, help="the models' activations (LlamaConfig.dtype)")
    ap.add_argument(
        "--param-dtype",
        default="bfloat16",
        choices=floats,
        help="their non-quantized params: norms, embeddings, head, bf16 weights",
    )
    args = ap.parse_args()
    layouts = args.bf16_layouts.split(",")
    if unknown := sorted(set(layouts) - {"kn", "nk"}):
        ap.error(f"--bf16-layouts: unknown layout(s) {unknown}; the layouts are kn and nk")
    baselines = [f"bf16_{layout}" for layout in layouts]
    batches = args.batches
    env = environment()
    print(env, flush=True)
    out = {"env": env, "layers": args.layers, "fuse_projections": args.fuse_projections, "rows": []}
    out["fuse_norms"] = args.fuse_norms
    base = block_config(args.layers, args.tiny) | dict(
        dtype=jnp.dtype(args.dtype), param_dtype=jnp.dtype(args.param_dtype)
    )
    out["dtype"], out["param_dtype"] = args.dtype, args.param_dtype
    results = {}
    for name in (*baselines, "mxfp8"):
        quantized = name == "mxfp8"
        cfg, params = build_model(
            base,
            quantized=quantized,
            bf16_layout="kn" if quantized else name.removeprefix("bf16_"),
            fuse_projections=args.fuse_projections,
            backend=args.backend,
            fuse_norms=args.fuse_norms,
        )
        nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
        row = {"model": name, "param_bytes": nbytes}
        for batch in batches:
            step = decode_step(cfg, params, batch)
            row[f"decode_b{batch}_ms_per_step"] = step * 1e3
            row[f"decode_b{batch}_tokens_per_s"] = batch / step
            print(f"{name}: batch {batch:2d} decode {step * 1e3:.3f} ms/step, {batch / step:,.0f} tokens/s", flush=True)
        if not args.no_prefill:
            ids = jax.random.randint(jax.random.key(7), (1, 2048), 0, cfg.vocab_size)
            t = wall(lambda c=cfg, pr=params, i=ids: forward(c, pr, i), repeats=5)
            row["prefill_2048_ms"] = t * 1e3
            print(f"{name}: prefill 2048 tokens {t * 1e3:.2f} ms; params {nbytes / 2**20:,.0f} MiB", flush=True)
        results[name] = row
        out["rows"].append(row)
        write_json("bench_llama.json", out)
        del params
    m = results["mxfp8"]
    for base_name in baselines:
        b = results[base_name]
        print(f"\n{'':28}{base_name:>12}{'mxfp8':>12}{'ratio':>12}")
        for batch in batches:
            key = f"decode_b{batch}_tokens_per_s"
            print(f"{'decode tokens/s, batch ' + str(batch):28}{b[key]:12,.0f}{m[key]:12,.0f}{m[key] / b[key]:11.2f}x")
        key = "prefill_2048_ms"
        if key in m:
            print(f"{'prefill 2048 tokens, ms':28}{b[key]:12.2f}{m[key]:12.2f}{b[key] / m[key]:11.2f}x")
        print(f"{'parameter MiB':28}{b['param_bytes'] / 2**20:12,.0f}{m['param_bytes'] / 2**20:12,.0f}")
    if len(baselines) > 1:
        print(f"\n{'against the faster bf16':28}{'layout':>12}{'mxfp8':>12}{'ratio':>12}")
        for batch in batches:
            key = f"decode_b{batch}_tokens_per_s"
            best = max(baselines, key=lambda name: results[name][key])
            ratio = m[key] / results[best][key]
            print(f"{'decode tokens/s, batch ' + str(batch):28}{best:>12}{m[key]:12,.0f}{ratio:11.2f}x")


if __name__ == "__main__":
    main()
