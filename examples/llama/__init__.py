"""A compact Flax Llama with MXFP8 projections, a HF/ModelOpt loader and KV-cache generation.

Run the fixture comparison from the repository root: ``python -m examples.llama``.
"""

from .generate import forward, generate, greedy_without_cache, model_apply
from .layers import MXFP8Dense, RowParallel, dense, row_dense
from .loader import load_llama, params_from_hf
from .model import Llama, LlamaConfig, init_cache
from .parallel import shard_params, sharded_apply

__all__ = [
    "Llama",
    "LlamaConfig",
    "MXFP8Dense",
    "RowParallel",
    "dense",
    "forward",
    "generate",
    "greedy_without_cache",
    "init_cache",
    "load_llama",
    "model_apply",
    "params_from_hf",
    "row_dense",
    "shard_params",
    "sharded_apply",
]
