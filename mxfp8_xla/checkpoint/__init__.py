"""ModelOpt MXFP8 checkpoints: load, save, inspect. See docs/checkpoints.md."""

from mxfp8_xla.checkpoint._safetensors import CheckpointError
from mxfp8_xla.checkpoint.inspect import inspect_main, summarize
from mxfp8_xla.checkpoint.modelopt import (
    DEFAULT_EXCLUDE,
    CheckpointIndex,
    ModelOptCheckpoint,
    QuantConfig,
    load_modelopt,
    load_safetensors,
    read_quant_config,
    scan_modelopt,
)
from mxfp8_xla.checkpoint.save import quantize_state_dict, save_modelopt

__all__ = [
    "DEFAULT_EXCLUDE",
    "CheckpointError",
    "CheckpointIndex",
    "ModelOptCheckpoint",
    "QuantConfig",
    "inspect_main",
    "load_modelopt",
    "load_safetensors",
    "quantize_state_dict",
    "read_quant_config",
    "save_modelopt",
    "scan_modelopt",
    "summarize",
]
