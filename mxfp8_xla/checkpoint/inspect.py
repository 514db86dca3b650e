"""``python -m mxfp8_xla inspect PATH``: a summary of a ModelOpt MXFP8 checkpoint (headers only)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from mxfp8_xla.checkpoint._safetensors import CheckpointError
from mxfp8_xla.checkpoint.modelopt import WEIGHT_SUFFIX, CheckpointIndex, scan_modelopt


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in shape) or "scalar"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _producer(producer: dict) -> str:
    return f"{producer.get('name', '?')} {producer.get('version', '')}".rstrip()


def summarize(index: CheckpointIndex) -> str:
    """The text ``inspect`` prints for a scanned checkpoint."""
    qc = index.quant_config
    root = index.path
    producer = qc.producer or {}
    lines = [
        f"ModelOpt MXFP8 checkpoint: {root}",
        f"  quant_algo {qc.quant_algo}, group_size {qc.group_size}, kv_cache_quant_algo "
        f"{qc.kv_cache_quant_algo}, producer {_producer(producer)}",
        f"  config from: {', '.join(Path(s).name for s in qc.sources)}",
        "  files: " + ", ".join(f"{s.path.name} ({s.path.stat().st_size:,} bytes)" for s in index.shards),
        "",
    ]

    q_bytes = q_bf16 = 0
    rows = [["quantized linear", "weight [N, K]", "scale", "bytes", "file"]]
    for name, (w, s) in index.quantized.items():
        rows.append(
            [
                name[: -len(WEIGHT_SUFFIX)],
                _shape(w.shape),
                _shape(s.shape),
                f"{w.nbytes + s.nbytes:,}",
                w.file.name,
            ]
        )
        q_bytes += w.nbytes + s.nbytes
        q_bf16 += 2 * w.nbytes
    lines.append(f"Quantized linears (MXFP8: float8_e4m3fn weight + uint8 E8M0 scale per 32): {len(rows) - 1}")
    if len(rows) > 1:
        lines += _table(rows, right={3})
    lines.append("")

    scales = {s.name for _, s in index.quantized.values()}
    other = [t for n, t in index.tensors.items() if n not in index.quantized and n not in scales]
    o_bytes = sum(t.nbytes for t in other)
    rows = [["tensor", "dtype", "shape", "bytes", "file"]]
    rows += [[t.name, t.dtype, _shape(t.shape), f"{t.nbytes:,}", t.file.name] for t in other]
    lines.append(f"Other tensors (not quantized): {len(other)}")
    if other:
        lines += _table(rows, right={3})
    lines.append("")

    lines.append(f"Excluded modules (patterns): {', '.join(qc.exclude_modules) or '(none)'}")
    for pattern in qc.exclude_modules:
        hits = [t.name for t in other if qc.excluded_by(t.name.rsplit(".", 1)[0]) == pattern]
        lines.append(f"  {pattern}: {', '.join(hits) if hits else '(matches no stored tensor)'}")
    lines.append("")

    total = q_bytes + o_bytes
    ratio = f" ({q_bf16 / q_bytes:.2f}x smaller than bf16's {q_bf16:,})" if q_bytes else ""
    lines.append(f"Quantized linears: {len(index.quantized)}, {q_bytes:,} bytes{ratio}")
    lines.append(f"Other tensors: {len(other)}, {o_bytes:,} bytes")
    lines.append(f"Total: {len(index.tensors)} stored tensors, {total:,} bytes")
    return "\n".join(lines)


def inspect_main(path: str, out: TextIO | None = None) -> int:
    """Print the summary of the checkpoint at ``path``; returns 0, or 1 with the error on stderr."""
    try:
        text = summarize(scan_modelopt(path))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text, file=out or sys.stdout)
    return 0
