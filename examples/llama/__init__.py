"""A compact Flax Llama with MXFP8 projections, a HF/ModelOpt loader and KV-cache generation.

Run the fixture comparison from the repository root: ``python -m examples.llama``.
"""

from .generate import forward, generate, greedy_without_cache
from .layers import MXFP8Dense, dense
from .loader import load_llama, params_from_hf
from .model import Llama, LlamaConfig, init_cache

__all__ = [
    "Llama",
    "LlamaConfig",
    "MXFP8Dense",
    "dense",
    "forward",
    "generate",
    "greedy_without_cache",
    "init_cache",
    "load_llama",
    "params_from_hf",
]
