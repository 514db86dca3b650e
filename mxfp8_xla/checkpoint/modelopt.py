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
:func:`mxfp8_xla.checkpoint.save.save_modelopt` writes the same format back; load -> save -> load is bit-exact.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mxfp8_xla.checkpoint._safetensors import (
    CheckpointError,
    SafetensorsFile,
    TensorInfo,
)
from mxfp8_xla.mxarray import MXArray
from mxfp8_xla.numerics import BLOCK_SIZE

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
    and ``hf_quant_config.json``'s ``quantization.exclude_modules``. Built in code, a lone string is one pattern.
    """

    quant_algo: str = "MXFP8"
    group_size: int = BLOCK_SIZE
    exclude_modules: tuple[str, ...] = DEFAULT_EXCLUDE
    kv_cache_quant_algo: str | None = None
    producer: Mapping[str, Any] | None = None
    sources: tuple[str, ...] = ()
    """The files these settings were read from (empty for a config built in code)."""

    def __post_init__(self) -> None:
        # A lone string is one pattern, not one per character.
        patterns = self.exclude_modules
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        bad = [p for p in patterns if not isinstance(p, str)]
        if bad:
            raise TypeError(f"QuantConfig: exclude_modules must be strings (module patterns), got {bad[0]!r}")
        object.__setattr__(self, "exclude_modules", patterns)

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


def _config_patterns(value: Any, file: Path, field: str) -> list[str]:
    """A config's module patterns as a list: none, one string, or a list of strings (else :class:`CheckpointError`)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return value
    raise CheckpointError(f"{str(file)!r}: {field} must be a list of module patterns (strings), got {value!r}")


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
            key = "ignore" if qc.get("ignore") else "exclude_modules"
            exclude += _config_patterns(qc.get(key), cfg_file, f"quantization_config.{key}")
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
        exclude += _config_patterns(quant.get("exclude_modules"), hf_file, "quantization.exclude_modules")
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
    quantized = pair_quantized(tensors, quant_config)
    return CheckpointIndex(path, config, quant_config, shards, tensors, quantized)


def _stored_where(info: TensorInfo) -> str:
    return f"tensor {info.name!r} in {str(info.file)!r}"


def pair_quantized(
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


def progress_bar(total: int, desc: str, enabled: bool | None) -> Any:
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
      dtype: dtype of the non-quantized floating-point tensors, a float of 16 bits or more (``None`` keeps the
        stored dtype; with JAX's x64 mode off, 64-bit tensors become 32-bit, and one whose values would
        change raises). Quantized weights keep their bytes: ``MXArray(data float8_e4m3fn [N, K], scale uint8
        [N, K/32])``.
      progress: show a progress bar (``None``: only when stderr is a terminal).

    Each shard is memory-mapped; every tensor is copied once, from the mapped file into
    a JAX array (then cast on device if ``dtype`` differs). All configs and headers are
    checked before any tensor is read; problems raise :class:`CheckpointError` naming
    the tensor and the file.
    """
    out_dtype = _cast_dtype("load_modelopt", dtype)
    index = scan_modelopt(path)
    parts: dict[str, jax.Array] = {}
    files: dict[str, Path] = {}
    scale_of = {scale.name: weight for weight, (_, scale) in index.quantized.items()}
    bar = progress_bar(index.total_bytes, f"loading {index.path.name}", progress)
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


def _cast_dtype(caller: str, dtype: Any) -> jnp.dtype | None:
    """``dtype`` as a ``jnp.dtype`` (``None`` stays ``None``), or ``TypeError`` unless it is a float of 16 bits or
    more: casting a checkpoint's float tensors to an integer or float8 dtype would change their values."""
    if dtype is None:
        return None
    d = jnp.dtype(dtype)
    if not jnp.issubdtype(d, jnp.floating) or d.itemsize < 2:
        raise TypeError(
            f"{caller}: dtype is {d}; expected a float dtype of 16 bits or more for the unquantized tensors "
            "(bfloat16, float16, float32), or None to keep the stored dtypes"
        )
    return d


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
    other floating-point tensors (a float of 16 bits or more, else ``TypeError``). Raises :class:`CheckpointError` for
    a bad file.
    """
    out_dtype = _cast_dtype("load_safetensors", dtype)
    shard = SafetensorsFile(path)
    out: dict[str, jax.Array] = {}
    for info in sorted(shard.tensors.values(), key=lambda t: t.begin):
        value = _device_array(shard.get(info.name), f"tensor {info.name!r} in {str(path)!r}")
        if out_dtype is not None and jnp.issubdtype(value.dtype, jnp.floating) and not info.dtype.startswith("F8"):
            value = value.astype(out_dtype)
        out[info.name] = value
    return out
