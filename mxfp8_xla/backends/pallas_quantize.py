"""One-pass MXFP8 activation quantization as a Pallas/Triton GPU kernel.

Each program reads a ``[bm, bk]`` tile once, quantizes it 32 columns at a time
with ``numerics.quantize_blocks`` (the same exact rule as ``mxfp8_xla.quantize``),
and writes the fp8 data and uint8 scales.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mxfp8_xla import numerics
from mxfp8_xla.mxarray import MXArray, check_quantizable

BLOCK = numerics.BLOCK_SIZE


def _kernel(x_ref, q_ref, s_ref, *, m: int, bm: int, bk: int) -> None:
    i, j = pl.program_id(0), pl.program_id(1)
    rows = pl.ds(i * bm, bm)
    ok = ((i * bm + jnp.arange(bm)) < m)[:, None]
    for c in range(bk // BLOCK):
        kb = j * (bk // BLOCK) + c
        x = pltriton.load(x_ref.at[rows, pl.ds(kb * BLOCK, BLOCK)], mask=ok, other=0)
        data, scale = numerics.quantize_blocks(x.astype(jnp.float32))
        pltriton.store(q_ref.at[rows, pl.ds(kb * BLOCK, BLOCK)], data, mask=ok)
        pltriton.store(s_ref.at[rows, pl.ds(kb, 1)], scale[:, None], mask=ok)


def _kernel_tile(x_ref, q_ref, s_ref, *, m: int, bm: int, bk: int) -> None:
    i, j = pl.program_id(0), pl.program_id(1)
    rows, cols = pl.ds(i * bm, bm), pl.ds(j * bk, bk)
    ok = ((i * bm + jnp.arange(bm)) < m)[:, None]
    x = pltriton.load(x_ref.at[rows, cols], mask=ok, other=0).astype(jnp.float32)
    data, scale = numerics.quantize_blocks(x.reshape(bm * bk // BLOCK, BLOCK))
    pltriton.store(q_ref.at[rows, cols], data.reshape(bm, bk), mask=ok)
    pltriton.store(s_ref.at[rows, pl.ds(j * (bk // BLOCK), bk // BLOCK)], scale.reshape(bm, bk // BLOCK), mask=ok)


def quantize_2d(
    x: jax.Array,
    bm: int = 32,
    bk: int = 128,
    num_warps: int = 4,
    tile: bool = False,
    interpret: bool = False,
) -> MXArray:
    """MXFP8-quantize ``x [M, K]`` along K in one pass (K a multiple of ``bk``)."""
    check_quantizable(x)
    m, k = x.shape
    if k % bk:
        raise ValueError(f"pallas quantize: K={k} must be a multiple of bk={bk}")
    q, s = pl.pallas_call(
        functools.partial(_kernel_tile if tile else _kernel, m=m, bm=bm, bk=bk),
        out_shape=(
            jax.ShapeDtypeStruct((m, k), jnp.float8_e4m3fn),
            jax.ShapeDtypeStruct((m, k // BLOCK), jnp.uint8),
        ),
        grid=(pl.cdiv(m, bm), k // bk),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="mxfp8_quantize",
    )(x)
    return MXArray(q, s)
