"""FlashInfer/CUTLASS 128x4 swizzled scale layout.

A 2-D scale matrix ``[rows, cols]`` (one uint8 per 32-element block) is padded with
zeros to ``[round_up(rows, 128), round_up(cols, 4)]`` and cut into 128x4 tiles,
stored row of tiles by row of tiles. Inside a tile, scale ``(r, c)`` sits at
``(r % 32) * 16 + (r // 32) * 4 + c``. This is ``get_sf_out_offset_128x4`` of
FlashInfer's quantization kernels (the layout ``mxfp8_quantize(...,
is_sf_swizzled_layout=True)`` writes and ``mm_mxfp8`` reads)::

    offset(r, c) = (r // 128) * (cols_padded // 4) * 512 + (c // 4) * 512
                   + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mxfp8_xla.mxarray import MXArray, check_array

ROW_TILE = 128
COL_TILE = 4


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``n``."""
    return -(-n // multiple) * multiple


def swizzled_scale_len(rows: int, cols: int) -> int:
    """Length of the 1-D swizzled buffer for a ``[rows, cols]`` scale matrix."""
    if rows < 0 or cols < 0:
        raise ValueError(f"a scale matrix [{rows}, {cols}] (rows, K/32 columns) needs sizes >= 0")
    return round_up(rows, ROW_TILE) * round_up(cols, COL_TILE)


def swizzle_scales(scale_2d: jax.Array) -> jax.Array:
    """Reorder uint8 scales ``[rows, cols]`` into FlashInfer's 1-D 128x4 layout (zero padded).

    Raises ``TypeError`` for an ``MXArray`` (pass its ``.scale``) or a dtype other than uint8, ``ValueError`` for a
    shape that is not 2-D."""
    if isinstance(scale_2d, MXArray):
        raise TypeError(
            f"swizzle_scales expects the 2-D uint8 scale matrix of an MXArray (its .scale, shape "
            f"{tuple(scale_2d.scale.shape)}), got the MXArray itself (data shape {tuple(scale_2d.shape)})"
        )
    check_array(scale_2d, "swizzle_scales: scale_2d")
    problem = (
        f"swizzle_scales expects a 2-D uint8 scale matrix, got shape {tuple(scale_2d.shape)} and dtype {scale_2d.dtype}"
    )
    if jnp.dtype(scale_2d.dtype) != jnp.uint8:
        raise TypeError(problem)
    if scale_2d.ndim != 2:
        raise ValueError(problem)
    rows, cols = scale_2d.shape
    rp, cp = round_up(rows, ROW_TILE), round_up(cols, COL_TILE)
    padded = jnp.pad(scale_2d, ((0, rp - rows), (0, cp - cols)))
    tiles = padded.reshape(rp // ROW_TILE, 4, 32, cp // COL_TILE, COL_TILE)
    return tiles.transpose(0, 3, 2, 1, 4).reshape(-1)


def unswizzle_scales(swizzled: jax.Array, rows: int, cols: int) -> jax.Array:
    """Inverse of :func:`swizzle_scales`: the 1-D buffer back to ``[rows, cols]``."""
    expected = swizzled_scale_len(rows, cols)
    check_array(swizzled, "unswizzle_scales: swizzled")
    if jnp.dtype(swizzled.dtype) != jnp.uint8:
        raise TypeError(
            f"unswizzle_scales expects uint8 scale bytes, got dtype {swizzled.dtype} with shape {tuple(swizzled.shape)}"
        )
    if swizzled.ndim != 1 or swizzled.shape[0] != expected:
        raise ValueError(
            f"unswizzle_scales: a [{rows}, {cols}] scale matrix needs a 1-D buffer of length "
            f"{expected}, got shape {tuple(swizzled.shape)}"
        )
    rp, cp = round_up(rows, ROW_TILE), round_up(cols, COL_TILE)
    tiles = swizzled.reshape(rp // ROW_TILE, cp // COL_TILE, 32, 4, COL_TILE)
    return tiles.transpose(0, 3, 2, 1, 4).reshape(rp, cp)[:rows, :cols]
