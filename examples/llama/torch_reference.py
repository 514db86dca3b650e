"""Recompute the fixture's ``logits_mxfp8`` in PyTorch, as its README describes (needs transformers).

    python -m examples.llama.torch_reference [--fixture DIR]

transformers' Llama in float32, every quantized weight dequantized from ``model.safetensors``
(``fp8 * 2**(scale - 127)``), every quantized Linear's input fake-quantized per 32 along
the last axis with ModelOpt's ``MXFP8QTensor`` rule (``e = ceil(log2(amax / 448))``,
computed with torch's float ops as ModelOpt does). With ``attn_implementation="sdpa"``
(transformers' default) this reproduces ``reference.npz`` bit for bit; with ``"eager"``
it differs by one fp8 rounding tie, exactly as the Flax example does (see docs/checkpoints.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from .run import DEFAULT_FIXTURE, rel_fro


def fake_quant_mxfp8(x: torch.Tensor) -> torch.Tensor:
    """ModelOpt ``MXFP8QTensor.quantize`` then ``dequantize`` (last dim a multiple of 32)."""
    blocks = x.reshape(-1, 32)
    descale = blocks.abs().amax(-1, keepdim=True) / 448.0
    e = torch.ceil(torch.where(descale > 0, torch.log2(descale), torch.tensor(-127.0)))
    e = torch.clamp(e, -127, 127)
    q = torch.clamp(blocks * torch.exp2(-e), -448, 448).to(torch.float8_e4m3fn)
    return (q.float() * torch.exp2(e)).reshape(x.shape)


def reference_logits(fixture: Path, attn_implementation: str) -> np.ndarray:
    config = json.loads((fixture / "config.json").read_text())
    config.pop("quantization_config")
    stored = load_file(str(fixture / "model.safetensors"))
    weights = {}
    for name, t in stored.items():
        if name.endswith("_scale"):
            continue
        if name + "_scale" in stored:
            scale = torch.exp2(stored[name + "_scale"].float() - 127)
            t = (t.float().reshape(*t.shape[:-1], -1, 32) * scale[..., None]).reshape(t.shape)
        weights[name] = t.float()
    cfg = LlamaConfig(**config)
    cfg._attn_implementation = attn_implementation
    model = LlamaForCausalLM(cfg).float().eval()
    model.load_state_dict(weights, strict=False)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name + ".weight" in stored and name + ".weight_scale" in stored:
            module.register_forward_pre_hook(lambda _m, args: (fake_quant_mxfp8(args[0]), *args[1:]))
    ids = torch.from_numpy(np.load(fixture / "reference.npz")["input_ids"])
    with torch.no_grad():
        return model(ids).logits.numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.llama.torch_reference")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    args = parser.parse_args(argv)
    want = np.load(args.fixture / "reference.npz")["logits_mxfp8"]
    for impl in ("sdpa", "eager"):
        got = reference_logits(args.fixture, impl)
        print(
            f"attn_implementation={impl!r:8} rel. Frobenius error vs logits_mxfp8: {rel_fro(got, want):.3e}"
            f"  (bit-exact: {np.array_equal(got, want)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
