"""Independent replica of FlashInfer's ``mm_mxfp8`` argument validation (CPU, torch only).

Written from flashinfer/gemm/gemm_base.py (``_check_mm_mxfp8_problem_size``,
``_mxfp8_swizzled_scale_len``, ``_cutlass_gemm_mxfp8_requirement``) and the
CUTLASS runner, which calls ``module.mxfp8_gemm(a, b.T, ...)``, i.e. reads ``b``
as the row-major ``[N, K]`` weight. CI does not install flashinfer; when it is
importable, tests also run FlashInfer's own check.

Also a torch model of the kernel for CPU end-to-end tests: it reads the 1-D
scales through FlashInfer's ``get_sf_out_offset_128x4`` formula
(csrc/nv_internal/tensorrt_llm/kernels/quantization_utils.cuh), independently
of ``mxfp8_xla.layout``.
"""

from __future__ import annotations

import torch


def pad_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def mxfp8_swizzled_scale_len_128x4(m: int, k: int) -> int:
    return pad_up(m, 128) * (pad_up(k, 128) // 128) * 4


def check_mm_mxfp8(a, b, a_descale, b_descale, out=None, out_dtype=torch.bfloat16, use_8x4_sf_layout=False):
    """Raise ValueError where mm_mxfp8 (CUTLASS backend) would reject or misread the arguments."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError("mm_mxfp8 accepts 2d tensors")
    if a.shape[1] != b.shape[0]:
        raise ValueError("K dimension mismatch")
    if b.shape[1] < 128 or a.shape[1] < 128:
        raise ValueError("n >= 128 and k >= 128")
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        raise ValueError("a and b must be float8_e4m3fn")
    if a_descale.dtype != torch.uint8 or b_descale.dtype != torch.uint8:
        raise ValueError("scales must be uint8")
    if use_8x4_sf_layout or a_descale.ndim != 1 or b_descale.ndim != 1:
        raise ValueError("cutlass needs 1-D 128x4 swizzled scales")
    m, k = a.shape
    n = b.shape[1]
    if a_descale.shape[0] != mxfp8_swizzled_scale_len_128x4(m, k):
        raise ValueError("a_descale length")
    if b_descale.shape[0] != mxfp8_swizzled_scale_len_128x4(n, k):
        raise ValueError("b_descale length")
    if out is not None:
        if tuple(out.shape) != (m, n) or out.device != a.device or out.dtype != out_dtype:
            raise ValueError("out shape/device/dtype")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
    if out_dtype not in (torch.bfloat16, torch.float16):
        raise ValueError("out dtype bf16/fp16")
    # Layouts the kernels assume: A row-major, B column-major (its transpose is the contiguous
    # [N, K] weight), scales contiguous.
    if a.stride() != (k, 1):
        raise ValueError("a must be row-major")
    if b.stride() != (1, k) or not b.t().is_contiguous():
        raise ValueError("b must be column-major [K, N]")
    if not (a_descale.is_contiguous() and b_descale.is_contiguous()):
        raise ValueError("scales must be contiguous")
    return True


def sf_offset_128x4(rows: int, cols: int) -> torch.Tensor:
    """``[rows, cols]`` int64 offsets of each scale in the 1-D 128x4 buffer (FlashInfer's formula)."""
    r = torch.arange(rows).unsqueeze(1)
    c = torch.arange(cols).unsqueeze(0)
    num_k_tiles = (cols + 3) // 4
    return (r // 128) * num_k_tiles * 512 + (c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + (c % 4)


def dequantize_swizzled(q: torch.Tensor, sf_1d: torch.Tensor) -> torch.Tensor:
    """float32 values of fp8 ``q [rows, K]`` whose scales sit in the 1-D 128x4 buffer ``sf_1d``."""
    rows, k = q.shape
    sf = sf_1d[sf_offset_128x4(rows, k // 32)].to(torch.float64)
    factor = torch.where(sf == 255, torch.nan, torch.exp2(sf - 127))
    vals = q.to(torch.float64).reshape(rows, k // 32, 32) * factor.unsqueeze(-1)
    return vals.reshape(rows, k)


def fake_mm_mxfp8(
    a, b, a_descale, b_descale, out=None, out_dtype=torch.bfloat16, use_8x4_sf_layout=False, backend="auto"
):
    """CPU model of ``flashinfer.mm_mxfp8``: validates like it, computes in float64."""
    check_mm_mxfp8(a, b, a_descale, b_descale, out=out, out_dtype=out_dtype, use_8x4_sf_layout=use_8x4_sf_layout)
    x = dequantize_swizzled(a, a_descale)
    w = dequantize_swizzled(b.t(), b_descale)  # b.t() is the [N, K] weight
    result = (x @ w.t()).to(out_dtype)
    if out is None:
        return result
    out.copy_(result)
    return out
