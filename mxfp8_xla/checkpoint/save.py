"""Write NVIDIA ModelOpt MXFP8 checkpoints, and quantize a Hugging Face state dict the way ModelOpt exports it.

The format is the one :mod:`mxfp8_xla.checkpoint.modelopt` reads; what its loader would refuse is refused here before
anything is written, and load -> save -> load is bit-exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from mxfp8_xla.checkpoint._safetensors import DTYPE_NAMES, DTYPES, CheckpointError, TensorInfo, write_file
from mxfp8_xla.checkpoint.modelopt import (
    CONFIG_FILE,
    DEFAULT_EXCLUDE,
    DEFAULT_MAX_SHARD_BYTES,
    HF_QUANT_CONFIG_FILE,
    INDEX_FILE,
    SCALE_SUFFIX,
    SHARD_PATTERN,
    SINGLE_FILE,
    WEIGHT_SUFFIX,
    ModelOptCheckpoint,
    QuantConfig,
    pair_quantized,
    progress_bar,
)
from mxfp8_xla.mxarray import FLOAT_DTYPES, MXArray, quantize
from mxfp8_xla.numerics import BLOCK_SIZE

log = logging.getLogger(__name__)


# torch dtypes NumPy has no dtype for: the same-size integer dtype to view the tensor as, and the ml_dtypes dtype
# to view the NumPy array as (by name: an older torch lacks some of them).
_TORCH_VIEWS = {
    "bfloat16": ("int16", ml_dtypes.bfloat16),
    "float8_e4m3fn": ("uint8", ml_dtypes.float8_e4m3fn),
    "float8_e5m2": ("uint8", ml_dtypes.float8_e5m2),
    "float8_e8m0fnu": ("uint8", ml_dtypes.float8_e8m0fnu),
}


def _from_torch(value: Any, what: str) -> Any:
    """A torch tensor as a NumPy array of the same dtype and bytes (bfloat16 and float8 through ``ml_dtypes``),
    sharing the tensor's memory where it is on the CPU; anything else as it is.

    torch is never imported here: a torch tensor can only come from a process that has imported it already.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.Tensor):
        return value
    name = str(value.dtype).removeprefix("torch.")
    try:
        t = value.detach().cpu()
        if name in _TORCH_VIEWS:
            int_dtype, np_dtype = _TORCH_VIEWS[name]
            return t.view(getattr(torch, int_dtype)).numpy().view(np_dtype)
        return t.numpy()
    except (TypeError, RuntimeError, NotImplementedError) as e:
        raise CheckpointError(
            f"{what} is a torch tensor of dtype {name}, shape {list(value.shape)}, which has no NumPy form to read "
            f"it through ({e}); convert it first (to float32 or bfloat16, say)"
        ) from None


def _is_float_linear_weight(name: str, value: Any) -> bool:
    """Whether ``name: value`` is an unquantized linear weight: a 2-D floating-point ``*.weight``."""
    return (
        not isinstance(value, MXArray)
        and name.endswith(WEIGHT_SUFFIX)
        and len(np.shape(value)) == 2
        and jnp.issubdtype(value.dtype, jnp.floating)
    )


def quantize_state_dict(
    tensors: Mapping[str, Any], *, exclude_modules: str | Iterable[str] = DEFAULT_EXCLUDE
) -> dict[str, MXArray | Any]:
    """Quantize the linear weights of a Hugging Face state dict the way ModelOpt exports them.

    Every 2-D floating-point ``*.weight`` (torch orientation ``[N, K]``) whose module is
    not matched by ``exclude_modules`` (ModelOpt wildcards; a lone string is one pattern) becomes
    ``mxfp8_xla.quantize(w)``: blocks of 32 along K, bit-identical to ModelOpt's
    ``weight``/``weight_scale`` bytes. Weights whose K is not a multiple of 32 are left
    as they are, with a logged warning. Other tensors are passed through unchanged, except
    that torch tensors (a ``state_dict()``) come back as NumPy arrays of the same dtype and
    bytes (bfloat16 and float8 as ``ml_dtypes`` dtypes), which :func:`save_modelopt` writes as they are.
    A weight to quantize that is not float32, bfloat16 or float16 (a float8 one is stored quantized already) raises
    :class:`CheckpointError` naming it.
    """
    qc = QuantConfig(exclude_modules=exclude_modules)
    out: dict[str, MXArray | Any] = {}
    for name, value in tensors.items():
        value = _from_torch(value, f"quantize_state_dict: tensor {name!r}")
        if _is_float_linear_weight(name, value) and qc.excluded_by(name[: -len(WEIGHT_SUFFIX)]) is None:
            if value.shape[-1] % BLOCK_SIZE:
                log.warning(
                    "quantize_state_dict: %s has shape %s; K=%d is not a multiple of %d, left unquantized",
                    name,
                    tuple(value.shape),
                    value.shape[-1],
                    BLOCK_SIZE,
                )
            elif jnp.dtype(value.dtype) not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"quantize_state_dict: tensor {name!r} ({jnp.dtype(value.dtype)}, shape {list(value.shape)}) is "
                    "not float32, bfloat16 or float16"
                    + (
                        ": it looks quantized already; load a quantized checkpoint with load_modelopt, or give it as "
                        f"MXArray(data, scale) with its {name + '_scale'!r}"
                        if jnp.dtype(value.dtype).itemsize == 1
                        else "; cast it to one of them first"
                    )
                )
            else:
                value = quantize(jnp.asarray(value))
        out[name] = value
    return out


def _stored_tensors(tensors: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Flatten ``MXArray`` entries into ``(name, data)``, ``(name + '_scale', scale)``; torch tensors as NumPy."""
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise CheckpointError(
                f"cannot save tensor {name!r}: tensor names must be strings, not {type(name).__name__}"
            )
        if name == "__metadata__":
            raise CheckpointError(
                "cannot save tensor '__metadata__': safetensors reserves that name for the file's metadata"
            )
        if isinstance(value, MXArray):
            if not name.endswith(WEIGHT_SUFFIX):
                raise CheckpointError(
                    f"cannot save MXArray {name!r}: quantized tensors must be named '<module>.weight' "
                    "(their scale is stored as '<module>.weight_scale')"
                )
            if value.ndim < 2:
                raise CheckpointError(f"cannot save MXArray {name!r} of shape {value.shape}: expected [N, K]")
            yield name, value.data
            yield name + "_scale", value.scale
        else:
            value = _from_torch(value, f"cannot save tensor {name!r}: it")
            if not (hasattr(value, "shape") and hasattr(value, "dtype")):
                value = np.asarray(value)
            if np.dtype(value.dtype) not in DTYPES.values():
                raise CheckpointError(f"cannot save tensor {name!r}: dtype {value.dtype} has no safetensors name")
            yield name, value


def _check_stored(
    path: Path, items: list[tuple[str, Any]], quant_config: QuantConfig
) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    """Apply the checks :func:`scan_modelopt` makes of a checkpoint's tensors to the ``(name, array)`` pairs
    :func:`save_modelopt` is about to write: what ``load_modelopt`` would refuse is refused before any write."""
    infos = {
        name: TensorInfo(name, path, DTYPE_NAMES[np.dtype(a.dtype)], tuple(a.shape), 0, _nbytes(a)) for name, a in items
    }

    def where_of(info: TensorInfo) -> str:
        return f"cannot save to {str(path)!r}: tensor {info.name!r} ({info.np_dtype}, shape {list(info.shape)})"

    try:
        return pair_quantized(infos, quant_config, where_of)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (load_modelopt would refuse the checkpoint; nothing was written)") from None


def save_modelopt(
    path: str | Path,
    checkpoint: ModelOptCheckpoint | Mapping[str, Any],
    *,
    config: Mapping[str, Any] | None = None,
    quant_config: QuantConfig | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool | None = None,
) -> list[Path]:
    """Write a ModelOpt MXFP8 checkpoint directory that :func:`load_modelopt` (and vLLM) read.

    Args:
      path: output directory (created if needed).
      checkpoint: a :class:`ModelOptCheckpoint`, or a mapping of Hugging Face names to
        ``MXArray`` (saved as ``name`` + ``name_scale``) and arrays (saved as they are:
        dtype and bytes unchanged).
      config: the model's ``config.json`` contents (default: the checkpoint's, else only
        ``quantization_config``); ``quantization_config`` is (re)written.
      quant_config: defaults to the checkpoint's; for a plain mapping, ``exclude_modules``
        defaults to the module of every 2-D float ``*.weight`` left unquantized.
      max_shard_bytes: above this the tensors go to ``model-0000i-of-0000n.safetensors``
        files with a ``model.safetensors.index.json``. A quantized weight and its scale
        are kept in one shard.
      progress: progress bar (``None``: only on a terminal).

    Returns the safetensors files written. Every file is written under a temporary name and renamed into place
    once all are written: a checkpoint may be saved over the one it was (memory-mapped) loaded from, and a save
    that fails part way (an error, a full disk) leaves the previous checkpoint in the directory as it was.
    """
    from mxfp8_xla import __version__

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(
            f"cannot save a checkpoint to {str(path)!r}: it exists and is not a directory (save_modelopt writes a "
            "checkpoint directory)"
        )
    if isinstance(checkpoint, ModelOptCheckpoint):
        tensors: Mapping[str, Any] = checkpoint.tensors
        config = checkpoint.config if config is None else config
        quant_config = checkpoint.quant_config if quant_config is None else quant_config
    else:
        tensors = checkpoint
    if quant_config is not None and (
        quant_config.quant_algo.upper() != "MXFP8" or quant_config.group_size != BLOCK_SIZE
    ):
        raise CheckpointError(
            f"save_modelopt writes MXFP8 with group size {BLOCK_SIZE}; got quant_algo "
            f"{quant_config.quant_algo!r}, group_size {quant_config.group_size!r}"
        )
    for name, value in tensors.items():
        if isinstance(value, MXArray) and isinstance(name, str) and name.endswith(WEIGHT_SUFFIX):
            pattern = None if quant_config is None else quant_config.excluded_by(name[: -len(WEIGHT_SUFFIX)])
            if pattern is not None:
                raise CheckpointError(f"cannot save {name!r} quantized: its module is excluded by pattern {pattern!r}")
            if name + "_scale" in tensors:
                raise CheckpointError(f"{name!r} is an MXArray and {name + '_scale'!r} is given as well")

    items = list(_stored_tensors(tensors))
    if quant_config is None:
        # Every 2-D float '*.weight' that is not stored quantized (a float8_e4m3fn weight with its scale).
        quantized = _check_stored(path, items, QuantConfig(exclude_modules=()))
        unquantized = [
            n[: -len(WEIGHT_SUFFIX)] for n, a in items if n not in quantized and _is_float_linear_weight(n, a)
        ]
        quant_config = QuantConfig(exclude_modules=tuple(unquantized))
    _check_stored(path, items, quant_config)

    shards = _plan_shards(items, max_shard_bytes)
    path.mkdir(parents=True, exist_ok=True)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    producer = {"name": "mxfp8_xla", "version": __version__}
    exclude = list(quant_config.exclude_modules)
    cfg = dict(config or {})
    cfg["quantization_config"] = {
        "ignore": exclude,
        "quant_algo": "MXFP8",
        "producer": producer,
        "quant_method": "modelopt",
    }
    hf = {
        "producer": producer,
        "quantization": {
            "quant_algo": "MXFP8",
            "kv_cache_quant_algo": quant_config.kv_cache_quant_algo,
            "group_size": BLOCK_SIZE,
            "exclude_modules": exclude,
        },
    }
    total = sum(_nbytes(a) for shard in shards for _, a in shard)

    # Every file goes to a temporary name first; only once all are written do they replace the previous
    # checkpoint's files, so a save that fails part way leaves the previous checkpoint as it was.
    staged: list[tuple[Path, Path]] = []

    def stage(name: str) -> Path:
        staged.append((path / f"{name}.new", path / name))
        return staged[-1][0]

    bar = progress_bar(total, f"saving {path.name}", progress)
    try:
        for file_name, shard in zip(names, shards, strict=True):
            write_file(stage(file_name), shard, {"format": "pt"}, lambda _, n: bar.update(n))
        if len(shards) > 1:
            weight_map = {n: f for f, shard in zip(names, shards, strict=True) for n, _ in shard}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            stage(INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        stage(CONFIG_FILE).write_text(json.dumps(cfg, indent=4) + "\n")
        stage(HF_QUANT_CONFIG_FILE).write_text(json.dumps(hf, indent=4) + "\n")
    except BaseException:
        for new, _ in staged:
            new.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    for new, final in staged:
        os.replace(new, final)
    _remove_stale(path, keep={final.name for _, final in staged})
    return [path / name for name in names]


def _nbytes(a: Any) -> int:
    return math.prod(a.shape) * np.dtype(a.dtype).itemsize


def _plan_shards(items: list[tuple[str, Any]], max_bytes: int) -> list[list[tuple[str, Any]]]:
    """Greedy split in order; a weight and its following scale always share a shard."""
    groups: list[list[tuple[str, Any]]] = []
    for name, a in items:
        if name.endswith(SCALE_SUFFIX) and groups and groups[-1][0][0] == name[: -len("_scale")]:
            groups[-1].append((name, a))
        else:
            groups.append([(name, a)])
    shards: list[list[tuple[str, Any]]] = [[]]
    size = 0
    for group in groups:
        g = sum(_nbytes(a) for _, a in group)
        if shards[-1] and size + g > max_bytes:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += g
    return shards


def _remove_stale(path: Path, keep: set[str]) -> None:
    """Remove the checkpoint files of a previous save that the new one (the files ``keep``) did not replace."""
    stale: list[Path] = []
    if (path / INDEX_FILE).exists():
        stale.append(path / INDEX_FILE)
    stale += [p for p in path.iterdir() if p.name == SINGLE_FILE or SHARD_PATTERN.fullmatch(p.name)]
    for p in stale:
        if p.name not in keep:
            p.unlink()
