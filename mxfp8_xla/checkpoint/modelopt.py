"""Load and save NVIDIA ModelOpt MXFP8 checkpoints (Hugging Face directory layout).

A ModelOpt MXFP8 export (``export_hf_checkpoint`` after ``mtq.MXFP8_DEFAULT_CFG``) is a
Hugging Face model directory:

* ``config.json`` with ``quantization_config = {quant_method: "modelopt", quant_algo:
  "MXFP8", ignore: [...]}`` and/or ``hf_quant_config.json`` with ``{quantization:
  {quant_algo: "MXFP8", group_size: 32, exclude_modules: [...]}}``;
* ``model.safetensors``, or shards listed in ``model.safetensors.index.json``;
* for each quantized linear ``M``: ``M.weight`` float8_e4m3fn ``[N, K]`` and
  ``M.weight_scale`` uint8 ``[N, K/32]`` (biased E8M0, one byte per 32 elements along
  K); everything else (embeddings, norms, the excluded ``lm_head``) in bf16.

:func:`load_modelopt` returns a :class:`ModelOptCheckpoint` whose ``tensors`` maps every
Hugging Face weight name to an :class:`~mxfp8_xla.MXArray` (quantized linears: the
``weight_scale`` is folded into the ``.weight`` entry) or a ``jax.Array``.
:func:`save_modelopt` writes the same format back; load -> save -> load is bit-exact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from mxfp8_xla.checkpoint._safetensors import (
    DTYPE_NAMES,
    DTYPES,
    CheckpointError,
    SafetensorsFile,
    TensorInfo,
    write_file,
)
from mxfp8_xla.mxarray import MXArray, quantize
from mxfp8_xla.numerics import BLOCK_SIZE

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HF_QUANT_CONFIG_FILE = "hf_quant_config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DEFAULT_EXCLUDE = ("lm_head", "model.embed_tokens")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
WEIGHT_SUFFIX = ".weight"
SCALE_SUFFIX = ".weight_scale"
WEIGHT_DTYPE = "F8_E4M3"
SCALE_DTYPES = ("U8", "F8_E8M0")  # E8M0 bytes either way; ModelOpt writes U8
# Tensors of other ModelOpt formats: loading them as plain arrays would drop a scale silently.
FOREIGN_SUFFIXES = {
    ".weight_scale_2": "NVFP4 (second-level per-tensor weight scale)",
    ".input_scale": "FP8/NVFP4 (static activation scale)",
    ".pre_quant_scale": "AWQ/SmoothQuant (pre-quantization scale)",
}


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """The quantization settings of a ModelOpt MXFP8 checkpoint.

    ``exclude_modules`` are ModelOpt's wildcard patterns (``*`` matches anything) of
    modules left unquantized: the union of ``config.json``'s ``quantization_config.ignore``
    and ``hf_quant_config.json``'s ``quantization.exclude_modules``.
    """

    quant_algo: str = "MXFP8"
    group_size: int = BLOCK_SIZE
    exclude_modules: tuple[str, ...] = DEFAULT_EXCLUDE
    kv_cache_quant_algo: str | None = None
    producer: Mapping[str, Any] | None = None
    sources: tuple[str, ...] = ()
    """The files these settings were read from (empty for a config built in code)."""

    def excluded_by(self, module: str) -> str | None:
        """The first ``exclude_modules`` pattern matching ``module`` (full match), or None."""
        for pattern in self.exclude_modules:
            if re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), module):
                return pattern
        return None


@dataclasses.dataclass
class ModelOptCheckpoint:
    """A loaded checkpoint.

    ``config``: ``config.json`` as a dict (``{}`` if absent). ``quant_config``: the
    parsed settings. ``tensors``: Hugging Face name -> ``MXArray`` (quantized linears,
    under their ``*.weight`` name; ``data`` float8_e4m3fn ``[N, K]``, ``scale`` uint8
    ``[N, K/32]``) or ``jax.Array`` (everything else, floats cast to the ``dtype`` asked
    for), in file order. ``files``: tensor name -> the file it was read from.
    """

    config: dict[str, Any]
    quant_config: QuantConfig
    tensors: dict[str, MXArray | jax.Array]
    path: Path | None = None
    files: dict[str, Path] = dataclasses.field(default_factory=dict)

    @property
    def quantized(self) -> list[str]:
        """Names of the ``MXArray`` entries."""
        return [k for k, v in self.tensors.items() if isinstance(v, MXArray)]


@dataclasses.dataclass
class CheckpointIndex:
    """What :func:`scan_modelopt` finds from headers alone (no tensor data is read)."""

    path: Path
    config: dict[str, Any]
    quant_config: QuantConfig
    shards: list[SafetensorsFile]
    tensors: dict[str, TensorInfo]
    """Every stored tensor, scales included, in shard then offset order."""
    quantized: dict[str, tuple[TensorInfo, TensorInfo]]
    """``M.weight`` -> (weight, scale) for each quantized linear."""

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data over every shard."""
        return sum(t.nbytes for t in self.tensors.values())


def _checkpoint_dir(path: str | Path) -> Path:
    """``Path(path)``, or :class:`CheckpointError` unless it is a directory (a file: name the one to pass)."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        what = "a file, not a checkpoint directory" if path.is_file() else "not a directory"
        raise CheckpointError(
            f"{str(path)!r} is {what}; pass the checkpoint directory, the one that holds {CONFIG_FILE} or "
            f"{HF_QUANT_CONFIG_FILE} and the safetensors files (perhaps its parent, {str(path.parent)!r})"
        )
    raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot parse {str(path)!r}: {e}") from None


def read_quant_config(path: str | Path) -> tuple[dict[str, Any], QuantConfig]:
    """Parse ``config.json`` and ``hf_quant_config.json`` of the directory ``path``.

    Raises :class:`CheckpointError` when neither declares a ModelOpt quantization, when
    the method is not ModelOpt's, when the algorithm is not MXFP8 (FP8, NVFP4, ...), when
    the group size is not 32, or when the two files disagree.
    """
    path = _checkpoint_dir(path)
    config: dict[str, Any] = {}
    found: list[tuple[str, str, Any]] = []  # (file, field, quant_algo)
    group_sizes: list[tuple[str, Any]] = []
    exclude: list[str] = []
    kv_algo = None
    producer = None

    cfg_file = path / CONFIG_FILE
    if cfg_file.is_file():
        config = _read_json(cfg_file)
        if not isinstance(config, dict):
            raise CheckpointError(f"{str(cfg_file)!r} is not a JSON object")
        qc = config.get("quantization_config")
        if qc is not None:
            if not isinstance(qc, dict):
                raise CheckpointError(f"{str(cfg_file)!r}: quantization_config is not an object")
            method = qc.get("quant_method")
            if method is not None and str(method).lower() != "modelopt":
                raise CheckpointError(
                    f"{str(cfg_file)!r}: quantization_config.quant_method is {method!r}; only ModelOpt "
                    "('modelopt') MXFP8 checkpoints are supported"
                )
            found.append((str(cfg_file), "quantization_config.quant_algo", qc.get("quant_algo")))
            if "group_size" in qc:
                group_sizes.append((f"{str(cfg_file)!r} (quantization_config.group_size)", qc["group_size"]))
            exclude += list(qc.get("ignore") or qc.get("exclude_modules") or [])
            kv_algo = qc.get("kv_cache_quant_algo", kv_algo)
            producer = qc.get("producer", producer)

    hf_file = path / HF_QUANT_CONFIG_FILE
    if hf_file.is_file():
        hf = _read_json(hf_file)
        quant = hf.get("quantization") if isinstance(hf, dict) else None
        if not isinstance(quant, dict):
            raise CheckpointError(f"{str(hf_file)!r} has no 'quantization' object")
        found.append((str(hf_file), "quantization.quant_algo", quant.get("quant_algo")))
        if "group_size" in quant:
            group_sizes.append((f"{str(hf_file)!r} (quantization.group_size)", quant["group_size"]))
        exclude += list(quant.get("exclude_modules") or [])
        kv_algo = quant.get("kv_cache_quant_algo", kv_algo)
        producer = hf.get("producer", producer)

    if not found:
        raise CheckpointError(
            f"{str(path)!r} is not a ModelOpt quantized checkpoint: neither {CONFIG_FILE} with a "
            f"'quantization_config' nor {HF_QUANT_CONFIG_FILE} was found"
        )
    for file, field, algo in found:
        if not isinstance(algo, str) or algo.upper() != "MXFP8":
            raise CheckpointError(
                f"{file!r}: {field} is {algo!r}; only MXFP8 checkpoints are supported (FP8, NVFP4, "
                "MXFP4, W4A16_AWQ, MIXED_PRECISION and others are different formats)"
            )
    for where, size in group_sizes:
        if size != BLOCK_SIZE:
            raise CheckpointError(
                f"{where} is {size!r}; MXFP8 uses one scale per {BLOCK_SIZE} elements, so the group "
                f"size must be {BLOCK_SIZE}"
            )
    quant_config = QuantConfig(
        quant_algo="MXFP8",
        group_size=BLOCK_SIZE,
        exclude_modules=tuple(dict.fromkeys(exclude)),
        kv_cache_quant_algo=kv_algo,
        producer=producer,
        sources=tuple(f for f, _, _ in found),
    )
    return config, quant_config


def _shard_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{str(index)!r} has no 'weight_map'")
        shards = list(dict.fromkeys(weight_map.values()))
        for shard in shards:
            if not (path / shard).is_file():
                names = [k for k, v in weight_map.items() if v == shard]
                raise CheckpointError(
                    f"{str(index)!r} maps {len(names)} tensors (e.g. {names[0]!r}) to {shard!r}, "
                    f"which does not exist in {str(path)!r}"
                )
        return [path / s for s in shards]
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    raise CheckpointError(f"{str(path)!r} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def scan_modelopt(path: str | Path) -> CheckpointIndex:
    """Read configs and safetensors headers of ``path`` and check them; no tensor data is read.

    Raises :class:`CheckpointError` for every problem :func:`load_modelopt` reports.
    """
    path = _checkpoint_dir(path)
    config, quant_config = read_quant_config(path)
    shards = [SafetensorsFile(f) for f in _shard_files(path)]

    tensors: dict[str, TensorInfo] = {}
    for shard in shards:
        for info in sorted(shard.tensors.values(), key=lambda t: t.begin):
            if info.name in tensors:
                raise CheckpointError(
                    f"tensor {info.name!r} is stored twice: in {str(tensors[info.name].file)!r} and {str(info.file)!r}"
                )
            tensors[info.name] = info
    index = path / INDEX_FILE
    if index.is_file():
        for name, shard_name in _read_json(index)["weight_map"].items():
            if name not in tensors or tensors[name].file.name != shard_name:
                raise CheckpointError(
                    f"{str(index)!r} lists tensor {name!r} in {str(path / shard_name)!r}, but that file "
                    "does not contain it"
                )
    quantized = _pair_quantized(tensors, quant_config)
    return CheckpointIndex(path, config, quant_config, shards, tensors, quantized)


def _stored_where(info: TensorInfo) -> str:
    return f"tensor {info.name!r} in {str(info.file)!r}"


def _pair_quantized(
    tensors: Mapping[str, TensorInfo],
    quant_config: QuantConfig,
    where_of: Callable[[TensorInfo], str] = _stored_where,
) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    """Match each ``*.weight`` with its ``*.weight_scale``; check names, dtypes and shapes.

    The one set of rules for the tensors of a checkpoint: :func:`scan_modelopt` applies it to the headers it
    reads, :func:`save_modelopt` to the tensors it is about to write (``where_of`` names a tensor in messages).
    """
    pairs: dict[str, tuple[TensorInfo, TensorInfo]] = {}
    for name, info in tensors.items():
        where = where_of(info)
        for suffix, fmt in FOREIGN_SUFFIXES.items():
            if name.endswith(suffix):
                raise CheckpointError(
                    f"{where} belongs to another quantization format ({fmt}); an MXFP8 checkpoint "
                    "carries only '.weight' and '.weight_scale' per quantized linear"
                )
        if name.endswith(SCALE_SUFFIX):
            weight_name = name[: -len("_scale")]
            if weight_name not in tensors:
                raise CheckpointError(f"{where} is a weight scale, but its weight {weight_name!r} is missing")
            continue
        scale_name = name + "_scale"
        is_fp8 = info.dtype == WEIGHT_DTYPE
        if not (is_fp8 or scale_name in tensors):
            if info.dtype.startswith("F8_"):
                raise CheckpointError(
                    f"{where} has dtype {info.dtype}; float8 tensors are only supported as MXFP8 "
                    f"weights (float8_e4m3fn '.weight' with a uint8 '.weight_scale')"
                )
            continue
        if not name.endswith(WEIGHT_SUFFIX):
            what = "is float8_e4m3fn" if is_fp8 else f"has a scale tensor {scale_name!r}"
            raise CheckpointError(
                f"{where} {what} but is not a '.weight'; MXFP8 checkpoints quantize only linear weights"
            )
        if not is_fp8:
            raise CheckpointError(
                f"{where} has a weight scale {scale_name!r} but dtype {info.dtype}; MXFP8 weights "
                f"must be {WEIGHT_DTYPE} (float8_e4m3fn)"
            )
        if scale_name not in tensors:
            raise CheckpointError(f"{where} is a quantized (float8_e4m3fn) weight without its scale {scale_name!r}")
        scale = tensors[scale_name]
        swhere = where_of(scale)
        if scale.dtype not in SCALE_DTYPES:
            raise CheckpointError(
                f"{swhere} has dtype {scale.dtype}; MXFP8 weight scales must be U8 (biased E8M0 bytes)"
            )
        if len(info.shape) < 2 or info.shape[-1] % BLOCK_SIZE:
            raise CheckpointError(
                f"{where} has shape {list(info.shape)}; an MXFP8 weight must be [N, K] with K a "
                f"multiple of {BLOCK_SIZE}"
            )
        expected = (*info.shape[:-1], info.shape[-1] // BLOCK_SIZE)
        if scale.shape != expected:
            raise CheckpointError(
                f"{swhere} has shape {list(scale.shape)}; weight {name!r} of shape {list(info.shape)} "
                f"needs a scale of shape {list(expected)} ([N, K/{BLOCK_SIZE}])"
            )
        module = name[: -len(WEIGHT_SUFFIX)]
        pattern = quant_config.excluded_by(module)
        if pattern is not None:
            raise CheckpointError(
                f"{where} is stored quantized, but module {module!r} is excluded from quantization "
                f"by pattern {pattern!r} of {', '.join(quant_config.sources) or 'the quant config'}"
            )
        pairs[name] = (info, scale)
    return pairs


def _progress(total: int, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar over bytes (``enabled=None``: only on a terminal); a no-op without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: loading works the same without a bar
        return _NoBar()
    disable = None if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=disable)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def load_modelopt(path: str | Path, *, dtype: Any = jnp.bfloat16, progress: bool | None = None) -> ModelOptCheckpoint:
    """Load a ModelOpt MXFP8 checkpoint directory.

    Args:
      path: the Hugging Face directory (``config.json`` / ``hf_quant_config.json`` and
        ``model.safetensors`` or shards with ``model.safetensors.index.json``).
      dtype: dtype of the non-quantized floating-point tensors (``None`` keeps the
        stored dtype; with JAX's x64 mode off, 64-bit tensors become 32-bit, and one whose values would
        change raises). Quantized weights keep their bytes: ``MXArray(data float8_e4m3fn [N, K], scale uint8
        [N, K/32])``.
      progress: show a progress bar (``None``: only when stderr is a terminal).

    Each shard is memory-mapped; every tensor is copied once, from the mapped file into
    a JAX array (then cast on device if ``dtype`` differs). All configs and headers are
    checked before any tensor is read; problems raise :class:`CheckpointError` naming
    the tensor and the file.
    """
    index = scan_modelopt(path)
    out_dtype = None if dtype is None else jnp.dtype(dtype)
    parts: dict[str, jax.Array] = {}
    files: dict[str, Path] = {}
    scale_of = {scale.name: weight for weight, (_, scale) in index.quantized.items()}
    bar = _progress(index.total_bytes, f"loading {index.path.name}", progress)
    try:
        for shard in index.shards:
            for info in sorted(shard.tensors.values(), key=lambda t: t.begin):
                view = shard.get(info.name)
                if info.name in scale_of:
                    parts[info.name] = jnp.asarray(view.view(np.uint8))
                elif info.name in index.quantized:
                    parts[info.name] = jnp.asarray(view)
                    files[info.name] = info.file
                else:
                    value = _device_array(view, f"tensor {info.name!r} in {str(info.file)!r}")
                    if out_dtype is not None and jnp.issubdtype(value.dtype, jnp.floating):
                        value = value.astype(out_dtype)
                    parts[info.name] = value
                    files[info.name] = info.file
                bar.update(info.nbytes)
    finally:
        bar.close()

    tensors: dict[str, MXArray | jax.Array] = {}
    for name in index.tensors:
        if name in scale_of:
            continue
        if name in index.quantized:
            tensors[name] = MXArray(data=parts[name], scale=parts[name + "_scale"])
        else:
            tensors[name] = parts[name]
    return ModelOptCheckpoint(index.config, index.quant_config, tensors, index.path, files)


def _device_array(view: np.ndarray, where: str) -> jax.Array:
    """``jnp.asarray(view)``, refusing a 64-bit tensor whose values JAX's 32-bit default (x64 off) would change:
    an integer outside the 32-bit range, or a finite float that overflows float32."""
    target = jax.dtypes.canonicalize_dtype(view.dtype)
    if target != view.dtype and view.size:
        if np.issubdtype(view.dtype, np.integer):
            info = np.iinfo(target)
            lost, what = view.min() < info.min or view.max() > info.max, f"values outside [{info.min}, {info.max}]"
        else:
            finite = np.abs(view[np.isfinite(view)])
            lost, what = finite.size and finite.max() > np.finfo(target).max, "finite values beyond float32's range"
        if lost:
            raise CheckpointError(
                f"{where} ({view.dtype}, shape {view.shape}) holds {what}, which JAX would change as it stores the "
                f"tensor as {target} with x64 off; enable it (jax.config.update('jax_enable_x64', True)) to load it "
                "as stored"
            )
    return jnp.asarray(view)


def load_safetensors(path: str | Path, *, dtype: Any = None) -> dict[str, jax.Array]:
    """Every tensor of one (unquantized) safetensors file, memory-mapped, as JAX arrays.

    float8 tensors are returned as stored (no scale is applied); ``dtype`` casts the
    other floating-point tensors. Raises :class:`CheckpointError` for a bad file.
    """
    shard = SafetensorsFile(path)
    out: dict[str, jax.Array] = {}
    for info in sorted(shard.tensors.values(), key=lambda t: t.begin):
        value = _device_array(shard.get(info.name), f"tensor {info.name!r} in {str(path)!r}")
        if dtype is not None and jnp.issubdtype(value.dtype, jnp.floating) and not info.dtype.startswith("F8"):
            value = value.astype(dtype)
        out[info.name] = value
    return out


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
    tensors: Mapping[str, Any], *, exclude_modules: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE
) -> dict[str, MXArray | Any]:
    """Quantize the linear weights of a Hugging Face state dict the way ModelOpt exports them.

    Every 2-D floating-point ``*.weight`` (torch orientation ``[N, K]``) whose module is
    not matched by ``exclude_modules`` (ModelOpt wildcards) becomes
    ``mxfp8_xla.quantize(w)``: blocks of 32 along K, bit-identical to ModelOpt's
    ``weight``/``weight_scale`` bytes. Weights whose K is not a multiple of 32 are left
    as they are, with a logged warning. Other tensors are passed through unchanged, except
    that torch tensors (a ``state_dict()``) come back as NumPy arrays of the same dtype and
    bytes (bfloat16 and float8 as ``ml_dtypes`` dtypes), which :func:`save_modelopt` writes as they are.
    """
    qc = QuantConfig(exclude_modules=tuple(exclude_modules))
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
        return _pair_quantized(infos, quant_config, where_of)
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

    bar = _progress(total, f"saving {path.name}", progress)
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
