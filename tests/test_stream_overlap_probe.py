"""benchmarks/stream_overlap_probe.py on CPU: its chunked product is the large-M route's, with or without the stream
annotation (which the CPU ignores; the overlap itself needs the GPU)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stream_overlap_probe as probe  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper  # noqa: E402


@pytest.mark.parametrize("streams", [False, True])
def test_the_chunked_product_is_the_decoded_operands_product(streams):
    x = jax.random.normal(jax.random.key(0), (64, 256), jnp.bfloat16)
    w = mx.quantize(jax.random.normal(jax.random.key(1), (512, 256), jnp.bfloat16))
    with hopper.interpret_mode():
        whole = jax.jit(
            lambda x, w: jax.lax.dot_general(
                hopper.decode_operand(x), hopper.decode_operand(w), probe.DN, preferred_element_type=jnp.bfloat16
            )
        )(x, w)
        out = jax.jit(probe.chunked(4, streams))(x, w)
        parts = jax.jit(probe.chunked(4, streams, parts=True))(x, w)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(whole, np.float32))
    assert len(parts) == 4 and all(p.shape == (64, 128) for p in parts)
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(p, np.float32) for p in parts], 1), np.asarray(out, np.float32)
    )
