"""Count the global-load instructions XLA emitted for the hopper GEMM kernel (PTX from --xla_dump_to).

Usage: XLA_FLAGS=--xla_dump_to=/tmp/xla_dump python benchmarks/ptx_loads.py /tmp/xla_dump
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402


def main() -> None:
    dump = Path(sys.argv[1])
    x = mx.quantize(jnp.ones((16, 4096), jnp.bfloat16))
    w = mx.quantize(jnp.ones((14336, 4096), jnp.bfloat16))
    jax.block_until_ready(jax.jit(lambda x, w: hopper.matmul_2d(x, w, jnp.bfloat16))(x, w))
    for ptx in sorted(dump.glob("*.ptx")):
        text = ptx.read_text()
        ops = collections.Counter(re.findall(r"\b(ld\.global[\w.]*|cp\.async[\w.]*|mma[\w.]*|wgmma[\w.]*)", text))
        print(ptx.name, dict(ops.most_common(20)))


if __name__ == "__main__":
    main()
