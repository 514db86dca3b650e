"""A small, strict safetensors reader/writer with float8 support, memory-mapped.

``safetensors``' own numpy front end cannot return ``F8_E4M3`` tensors (numpy has no
float8 dtype), so this module parses the format itself: an 8-byte little-endian
header length, a JSON header ``{name: {dtype, shape, data_offsets}, "__metadata__":
{...}}``, then the data section. The whole file is mapped once with ``np.memmap``
and each tensor is a zero-copy view of it, typed with ``ml_dtypes`` where numpy has
no dtype of its own. Every inconsistency (short file, bad JSON, offsets that do not
match the shape, data past the end of the file) raises :class:`CheckpointError`
naming the file and, where there is one, the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit safetensors itself enforces

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
}
DTYPE_NAMES: dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the tensor and file."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, safetensors dtype name, shape and byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the data section, as in the header
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return self.end - self.begin

    @property
    def np_dtype(self) -> np.dtype:
        """The NumPy dtype of the safetensors dtype name."""
        return DTYPES[self.dtype]


class SafetensorsFile:
    """One safetensors file: its validated header, and zero-copy views of its tensors."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tensors, self.metadata, self.data_start = read_header(self.path)
        self._mmap: np.memmap | None = None

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy view of the memory-mapped file."""
        info = self.tensors[name]
        count = math.prod(info.shape)
        if count == 0:
            return np.zeros(info.shape, info.np_dtype)
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self.data_start + info.begin
        raw = self._mmap[start : start + info.nbytes]
        return raw.view(info.np_dtype).reshape(info.shape)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate the header of ``path``: ``(tensors, metadata, data_start)``."""
    where = f"safetensors file {str(path)!r}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{where} is truncated or corrupt: {size} bytes, too short for the 8-byte header length"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{where} is truncated or corrupt: its header claims {header_len} bytes but the "
                    f"file has {size} bytes in all"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"cannot read {where}: {e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where} is corrupt: its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} is corrupt: its header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(name, entry, path, where, data_len)

    spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise CheckpointError(f"{where} is corrupt: tensors {name_a!r} and {name_b!r} overlap")
    return tensors, metadata, data_start


def _tensor_info(name: str, entry: object, path: Path, where: str, data_len: int) -> TensorInfo:
    bad = f"{where} is corrupt: the header entry of tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{bad} lacks dtype/shape/data_offsets: {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(
            f"tensor {name!r} in {where} has unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}"
        )
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise CheckpointError(f"{bad} has an invalid shape {shape!r}; expected a list of non-negative integers")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{bad} has invalid data_offsets {offsets!r}; expected [begin, end], 0 <= begin <= end")
    begin, end = offsets
    need = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != need:
        raise CheckpointError(
            f"{bad}: data_offsets {offsets} span {end - begin} bytes but {dtype} {shape} needs {need}"
        )
    if end > data_len:
        raise CheckpointError(
            f"{where} is truncated: tensor {name!r} needs bytes [{begin}, {end}) of the data section "
            f"but the file holds only {data_len} data bytes"
        )
    return TensorInfo(name, path, dtype, tuple(shape), begin, end)


def write_file(
    path: str | os.PathLike,
    tensors: Iterable[tuple[str, np.ndarray]],
    metadata: Mapping[str, str] | None = None,
    on_tensor_written: Callable[[str, int], None] | None = None,
) -> None:
    """Write ``(name, array)`` pairs to ``path`` as safetensors, atomically.

    Arrays are streamed one at a time (C order); the file is written under a
    temporary name and renamed into place, so a reader that has the old file
    memory-mapped keeps seeing the old bytes, and a write that fails leaves
    neither a partial file nor the temporary one.
    """
    path = Path(path)
    items = list(tensors)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, a in items:
        dtype = DTYPE_NAMES.get(np.dtype(a.dtype))
        if dtype is None:
            raise CheckpointError(
                f"cannot write tensor {name!r} to {str(path)!r}: dtype {a.dtype} has no safetensors name"
            )
        nbytes = math.prod(a.shape) * np.dtype(a.dtype).itemsize
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment

    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, a in items:
                host = np.ascontiguousarray(np.asarray(a)).reshape(-1)  # one tensor on the host at a time
                f.write(host.view(np.uint8).data)
                if on_tensor_written is not None:
                    on_tensor_written(name, host.nbytes)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves no partial file behind
        raise
    os.replace(tmp, path)
