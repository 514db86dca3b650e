"""FlashInfer 128x4 swizzled scale layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mxfp8_xla as mx


def offset_128x4(r: int, c: int, cols: int) -> int:
    """FlashInfer's get_sf_out_offset_128x4, transcribed from its CUDA source."""
    num_k_tiles = (cols + 3) // 4
    return (r // 128) * num_k_tiles * 512 + (c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4


@pytest.mark.parametrize("rows", [1, 127, 128, 129, 300])
@pytest.mark.parametrize("cols", range(1, 10))
def test_round_trip_and_index_map(rows, cols, rng):
    s = rng.integers(1, 256, size=(rows, cols), dtype=np.uint8)
    sw = np.asarray(jax.jit(mx.swizzle_scales)(jnp.asarray(s)))
    assert sw.shape == (mx.swizzled_scale_len(rows, cols),)
    assert sw.shape[0] == (-(-rows // 128) * 128) * (-(-cols // 4) * 4)
    want = np.zeros_like(sw)
    for r in range(rows):
        for c in range(cols):
            want[offset_128x4(r, c, cols)] = s[r, c]
    np.testing.assert_array_equal(sw, want)  # padding is zero-filled
    back = jax.jit(mx.unswizzle_scales, static_argnums=(1, 2))(jnp.asarray(sw), rows, cols)
    np.testing.assert_array_equal(np.asarray(back), s)


def test_hand_computed_positions():
    s = np.zeros((256, 8), np.uint8)
    s[0, 0], s[0, 3], s[1, 0], s[32, 0], s[0, 4], s[128, 0], s[131, 6] = 1, 2, 3, 4, 5, 6, 7
    sw = np.asarray(mx.swizzle_scales(jnp.asarray(s)))
    assert sw[0] == 1  # first byte
    assert sw[3] == 2  # inner column
    assert sw[16] == 3  # next row: 16 bytes on
    assert sw[4] == 4  # row 32 is the second group of 4 in the same 16-byte line
    assert sw[512] == 5  # column 4 starts the next 128x4 tile
    assert sw[1024] == 6  # row 128: tile row 1, after 2 column tiles of 512
    assert sw[1024 + 512 + 3 * 16 + 2] == 7


def test_bad_inputs():
    with pytest.raises(
        TypeError, match=r"^swizzle_scales: scale_2d must be an array \(jnp.asarray makes one\), got list$"
    ):
        mx.swizzle_scales([[1, 2]])
    with pytest.raises(TypeError, match=r"^unswizzle_scales: swizzled must be an array \(jnp.asarray makes one\), got"):
        mx.unswizzle_scales([1, 2], 1, 1)
    with pytest.raises(ValueError, match="2-D uint8"):
        mx.swizzle_scales(jnp.zeros((4,), jnp.uint8))
    with pytest.raises(TypeError, match="2-D uint8.*float32"):
        mx.swizzle_scales(jnp.zeros((4, 4), jnp.float32))
    with pytest.raises(TypeError, match=r"the 2-D uint8 scale matrix of an MXArray \(its .scale, shape \(4, 2\)\)"):
        mx.swizzle_scales(mx.quantize(jnp.zeros((4, 64))))
    with pytest.raises(ValueError, match=r"needs a 1-D buffer of length 512"):
        mx.unswizzle_scales(jnp.zeros((100,), jnp.uint8), 3, 2)
    with pytest.raises(TypeError, match=r"expects uint8 scale bytes, got dtype float32 with shape \(512,\)"):
        mx.unswizzle_scales(jnp.zeros((512,), jnp.float32), 3, 2)
    with pytest.raises(ValueError, match=r"a scale matrix \[-5, 4\] \(rows, K/32 columns\) needs sizes >= 0"):
        mx.unswizzle_scales(jnp.zeros((0,), jnp.uint8), -5, 4)
