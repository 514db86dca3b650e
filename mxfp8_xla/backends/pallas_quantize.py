"""One-pass MXFP8 Pallas/Triton GPU kernels: quantize, decode, and quantize-then-decode.

Each program reads a ``[bm, bk]`` tile once. ``quantize_2d`` quantizes it with
``numerics.quantize_blocks`` (the exact rule of ``mxfp8_xla.quantize``) and writes the
fp8 data and uint8 scales; ``decode_2d`` turns an MXArray into bf16 (the arithmetic of
``mxfp8_xla.dequantize``); ``fake_quantize_2d`` does both without writing the fp8 data.
``quantize_transposed_2d`` quantizes a ``[K, N]`` kernel along K (``quantize(kernel, axis=0)``), reading ``[bk, bn]``
tiles along N and writing them transposed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mxfp8_xla import numerics, varying_axes
from mxfp8_xla.mxarray import MXArray, check_quantizable

IMPORT_ERROR: str | None = None
"""Why Pallas Triton does not import here (``None``: it does)."""
try:  # jax 0.11 deprecates its Pallas Triton backend: without it the package still imports, and the
    # hopper backend is unavailable (``select.backend_problems`` says why)
    from jax.experimental.pallas import triton as pltriton
except ImportError as e:
    pltriton = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"

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


def decode_tile(data: jax.Array, scale: jax.Array) -> jax.Array:
    """``[R, bk]`` fp8 and ``[R, bk // 32]`` scale bytes to bf16, with ``dequantize``'s arithmetic.

    ``fp8 * 2**(s - 127)`` is exact in float32 and in bf16 (8 mantissa bits hold E4M3's 4)
    down to bf16's smallest normal; smaller values round as ``dequantize(a, bfloat16)`` does.
    """
    r, bk = data.shape
    blocks = data.astype(jnp.float32).reshape(r, bk // BLOCK, BLOCK)
    hi, lo = numerics.scale_to_float(scale)
    return (blocks * hi[:, :, None] * lo[:, :, None]).reshape(r, bk).astype(jnp.bfloat16)


def _decode_kernel(d_ref, s_ref, o_ref, *, m: int, bm: int, bk: int) -> None:
    i, j = pl.program_id(0), pl.program_id(1)
    rows, cols = pl.ds(i * bm, bm), pl.ds(j * bk, bk)
    ok = ((i * bm + jnp.arange(bm)) < m)[:, None]
    bits = pltriton.load(d_ref.at[rows, cols], mask=ok, other=0)  # fp8 as uint8: masked loads need integers
    scale = pltriton.load(s_ref.at[rows, pl.ds(j * (bk // BLOCK), bk // BLOCK)], mask=ok, other=0)
    pltriton.store(
        o_ref.at[rows, cols], decode_tile(jax.lax.bitcast_convert_type(bits, jnp.float8_e4m3fn), scale), mask=ok
    )


def _fake_quantize_kernel(x_ref, o_ref, *, m: int, bm: int, bk: int) -> None:
    """``m`` output rows; rows past x's own are zeros (quantize(0) decodes to 0)."""
    i, j = pl.program_id(0), pl.program_id(1)
    rows, cols = pl.ds(i * bm, bm), pl.ds(j * bk, bk)
    row = i * bm + jnp.arange(bm)
    x = pltriton.load(x_ref.at[rows, cols], mask=(row < x_ref.shape[0])[:, None], other=0).astype(jnp.float32)
    data, scale = numerics.quantize_blocks(x.reshape(bm * bk // BLOCK, BLOCK))
    out = decode_tile(data.reshape(bm, bk), scale.reshape(bm, bk // BLOCK))
    pltriton.store(o_ref.at[rows, cols], out, mask=(row < m)[:, None])


def _transposed_kernel(x_ref, q_ref, s_ref, *, n: int, bk: int, bn: int) -> None:
    j, i = pl.program_id(0), pl.program_id(1)  # N tile, K tile
    col = j * bn + jnp.arange(bn)
    x = pltriton.load(x_ref.at[pl.ds(i * bk, bk), pl.ds(j * bn, bn)], mask=(col < n)[None, :], other=0)
    data, scale = numerics.quantize_blocks(x.astype(jnp.float32).T.reshape(bn * bk // BLOCK, BLOCK))
    ok = (col < n)[:, None]
    pltriton.store(q_ref.at[pl.ds(j * bn, bn), pl.ds(i * bk, bk)], data.reshape(bn, bk), mask=ok)
    pltriton.store(s_ref.at[pl.ds(j * bn, bn), pl.ds(i * (bk // BLOCK), bk // BLOCK)], scale.reshape(bn, -1), mask=ok)


def _call_over_tiles(
    kernel, out_shape, operands, *, m: int, k: int, bm: int, bk: int, num_warps: int, interpret: bool, name: str
):
    """Run ``kernel`` on a ``(cdiv(m, bm), k // bk)`` grid of ``[bm, bk]`` tiles (K a multiple of ``bk``)."""
    if k % bk:
        raise ValueError(f"pallas {name}: K={k} must be a multiple of bk={bk}")
    return pl.pallas_call(
        functools.partial(kernel, m=m, bm=bm, bk=bk),
        out_shape=out_shape,
        grid=(pl.cdiv(m, bm), k // bk),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name=name,
    )(*operands)


def decode_2d(a: MXArray, bm: int = 64, bk: int = 512, num_warps: int = 4, interpret: bool = False) -> jax.Array:
    """``dequantize(a, bfloat16)`` for ``a [M, K]`` in one pass (bit-identical; K a multiple of ``bk``)."""
    m, k = a.shape
    operands = (jax.lax.bitcast_convert_type(a.data, jnp.uint8), a.scale)
    out = varying_axes.struct((m, k), jnp.bfloat16, a)
    tiles = dict(m=m, k=k, bm=bm, bk=bk, num_warps=num_warps, interpret=interpret)
    return _call_over_tiles(_decode_kernel, out, operands, name="mxfp8_decode", **tiles)


def fake_quantize_2d(
    x: jax.Array, bm: int = 32, bk: int = 256, num_warps: int = 4, interpret: bool = False, rows: int | None = None
) -> jax.Array:
    """``dequantize(quantize(x), bfloat16)`` for ``x [M, K]`` in one pass, the fp8 data never written.

    ``rows >= M`` pads the result with zero rows (a GEMM's row tile) in the same pass.
    """
    check_quantizable(x)
    m, k = x.shape
    rows = m if rows is None else rows
    if rows < m:
        raise ValueError(f"pallas mxfp8_fake_quantize: rows={rows} is fewer than x's {m} rows (x shape {x.shape})")
    out = varying_axes.struct((rows, k), jnp.bfloat16, x)
    tiles = dict(m=rows, k=k, bm=bm, bk=bk, num_warps=num_warps, interpret=interpret)
    return _call_over_tiles(_fake_quantize_kernel, out, (x,), name="mxfp8_fake_quantize", **tiles)


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
    out = (varying_axes.struct((m, k), jnp.float8_e4m3fn, x), varying_axes.struct((m, k // BLOCK), jnp.uint8, x))
    tiles = dict(m=m, k=k, bm=bm, bk=bk, num_warps=num_warps, interpret=interpret)
    q, s = _call_over_tiles(_kernel_tile if tile else _kernel, out, (x,), name="mxfp8_quantize", **tiles)
    return MXArray(q, s)


def quantize_transposed_2d(
    x: jax.Array, bk: int = 32, bn: int = 128, num_warps: int = 4, interpret: bool = False
) -> MXArray:
    """``quantize(x, axis=0)`` for a kernel ``x [K, N]`` in one pass: an MXArray ``[N, K]`` (K a multiple of ``bk``).

    XLA fuses the move of K last into its quantization pass at 8-23% of copy bandwidth on an H200 (by the timer);
    its default 32 x 128 tiles, read along N and transposed in registers, ran at 48-92%
    (benchmarks/weight_quantize_probe.py, docs/benchmark_log.md, twenty-fourth session).
    """
    if jnp.ndim(x) != 2:
        raise ValueError(f"pallas mxfp8_quantize_transposed: x must be 2-D [K, N], got shape {tuple(jnp.shape(x))}")
    check_quantizable(x, "pallas mxfp8_quantize_transposed: x [K, N]", axis=0)
    k, n = x.shape
    if k % bk:
        raise ValueError(f"pallas mxfp8_quantize_transposed: K={k} must be a multiple of bk={bk}")
    out = (varying_axes.struct((n, k), jnp.float8_e4m3fn, x), varying_axes.struct((n, k // BLOCK), jnp.uint8, x))
    q, s = pl.pallas_call(
        functools.partial(_transposed_kernel, n=n, bk=bk, bn=bn),
        out_shape=out,
        grid=(pl.cdiv(n, bn), k // bk),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="mxfp8_quantize_transposed",
    )(x)
    return MXArray(q, s)
