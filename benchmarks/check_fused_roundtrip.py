"""Does XLA keep the fp8 rounding when quantize and dequantize fuse in one jit? (GPU check)

bench_gemm on an H100 showed ``jnp.dot(dequantize(quantize(x), bf16), ...)`` 2.7% away
from the emulation backend, the size of the activations' MXFP8 error itself, as if the
E4M3 rounding had been dropped. This compares, on random data:
  split  : jit(quantize) then jit(dequantize)      (fp8 materialized between programs)
  fused  : jit(lambda x: dequantize(quantize(x)))  (one XLA program)
  manual : the same math written inline with no barrier
for float32 and bfloat16 outputs, and reports how many elements differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla import numerics  # noqa: E402


def manual_roundtrip(x, dtype):
    blocks = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 32)
    data, scale = numerics.quantize_blocks(blocks)
    hi, lo = numerics.scale_to_float(scale)
    return (data.astype(jnp.float32) * hi[..., None] * lo[..., None]).reshape(x.shape).astype(dtype)


def manual_roundtrip_exact(x, dtype):
    """``manual_roundtrip`` with the fp8 values behind an optimization barrier."""
    blocks = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 32)
    data, scale = jax.lax.optimization_barrier(numerics.quantize_blocks(blocks))
    hi, lo = numerics.scale_to_float(scale)
    return (data.astype(jnp.float32) * hi[..., None] * lo[..., None]).reshape(x.shape).astype(dtype)


def main() -> None:
    print(jax.devices()[0].device_kind, jax.__version__)
    x = jax.random.normal(jax.random.key(0), (256, 4096), jnp.bfloat16) * 3
    for dtype in (jnp.float32, jnp.bfloat16):
        split = jax.jit(lambda a, d=dtype: mx.dequantize(a, d))(jax.jit(mx.quantize)(x))
        fused = jax.jit(lambda v, d=dtype: mx.dequantize(mx.quantize(v), d))(x)
        manual = jax.jit(lambda v, d=dtype: manual_roundtrip(v, d))(x)
        raw = np.asarray(x, np.float32)
        exact = jax.jit(lambda v, d=dtype: manual_roundtrip_exact(v, d))(x)
        for name, got in (("fused", fused), ("manual", manual), ("barrier", exact)):
            diff = int(np.sum(np.asarray(got, np.float32) != np.asarray(split, np.float32)))
            print(f"{jnp.dtype(dtype).name:9} {name:7} elements differing from split: {diff} of {x.size}")
        same_as_input = int(np.sum(np.asarray(manual, np.float32) == raw))
        print(f"{jnp.dtype(dtype).name:9} manual  elements equal to the unquantized input: {same_as_input}")


if __name__ == "__main__":
    main()
