"""Probe: what limits the small-M MXFP8 GEMM on Hopper, if not the decode arithmetic.

``decode_probe.py`` found the kernel no faster when the decode is dropped entirely, so
the time goes to moving the weight. This script measures, in one run on one GPU
(CUDA events through torch, 3 rotating weight copies so nothing is served from L2):

- ``copy``: torch device-to-device copy of 1 GiB (bytes read + written): the ceiling
- ``gemm``: the small-M GEMM (``decode_probe._gemm``'s structure) with pointer or TMA
  (tensor-descriptor) weight loads, the weight as the MMA's A (``swap``) or B operand,
  split-K (partials reduced by torch, inside the timed call), and the weight's scales
  applied by a reshape per 32-column block (the shipped decode) or ``gather``ed: each
  element loads its block's scale byte (L1 hits), so the decode is elementwise

(An earlier version also timed a kernel that only summed the weight: it ran slower than
the GEMM, because Triton software-pipelines only loads that feed a dot; not a ceiling.)

Each GEMM row is checked against a float64 reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_probe import _decode, bench, opcode_counts, run_checked, shape_setup, write_rows  # noqa: E402


@triton.jit
def _load_w(w, n0, k0, K: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, TMA: tl.constexpr):
    """The ``[BN, BK]`` uint8 weight tile at ``(n0, k0)``: a TMA descriptor load or pointer loads."""
    if TMA:
        tile = w.load([n0, k0])
    else:
        tile = tl.load(w + (n0 + tl.arange(0, BN))[:, None] * K + k0 + tl.arange(0, BK)[None, :])
    return tile


@triton.jit
def _gemm(x_ptr, xs_ptr, w, ws_ptr, o_ptr, M, N, K: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
          SPLIT: tl.constexpr, TMA: tl.constexpr, SWAP: tl.constexpr, GATHER: tl.constexpr):  # fmt: skip
    BM: tl.constexpr = 16
    n0 = tl.program_id(0) * BN
    s = tl.program_id(1)
    offs_m = tl.arange(0, BM)
    offs_n = n0 + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    offs_kb = tl.arange(0, BK // 32)
    m_ok = offs_m < M
    acc = tl.zeros((BN, BM) if SWAP else (BM, BN), tl.float32)
    for i in range(0, K // SPLIT, BK):
        k0 = s * (K // SPLIT) + i
        xq = tl.load(x_ptr + offs_m[:, None] * K + k0 + offs_k[None, :], mask=m_ok[:, None], other=0)
        xs = tl.load(xs_ptr + offs_m[:, None] * (K // 32) + k0 // 32 + offs_kb[None, :], mask=m_ok[:, None], other=1)
        x = _decode(xq, xs, BM, BK, "convert")
        wq = _load_w(w, n0, k0, K, BN, BK, TMA)
        if GATHER:  # each scale byte loaded once per element (L1 hits): an elementwise decode, no reshape
            ws = tl.load(ws_ptr + offs_n[:, None] * (K // 32) + (k0 + offs_k)[None, :] // 32)
            f = (ws.to(tl.int32) << 23).to(tl.float32, bitcast=True)
            wt = (wq.to(tl.float8e4nv, bitcast=True).to(tl.float32) * f).to(tl.bfloat16)
        else:
            ws = tl.load(ws_ptr + offs_n[:, None] * (K // 32) + k0 // 32 + offs_kb[None, :])
            wt = _decode(wq, ws, BN, BK, "convert")
        if SWAP:
            acc += tl.dot(wt, tl.trans(x))
        else:
            acc += tl.dot(x, tl.trans(wt))
    if SWAP:
        acc = tl.trans(acc)
    ptrs = o_ptr + s * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(ptrs, acc.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])


def copy_bandwidth() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return 2 * src.numel() / (bench(lambda: dst.copy_(src)) * 1e-6)


def gemm_rows(n, k, m, gen, counter, configs) -> list[dict]:
    xq, xs, wsets, ref, base = shape_setup(m, n, k, gen, counter)
    print(f"N={n} K={k} M={m}: torch bf16 linear {base:.1f} us", flush=True)
    rows = []
    for bn, bk, split, tma, swap, stages, gather in configs:
        o = torch.empty((split, m, n), dtype=torch.float32 if split > 1 else torch.bfloat16, device="cuda")
        ws_ = [(TensorDescriptor.from_tensor(w, [bn, bk]) if tma else w, s) for w, s in wsets]

        def call(i, o=o, ws_=ws_, cfg=(bn, bk, split, tma, swap, stages, gather)):
            bn, bk, split, tma, swap, stages, gather = cfg
            w, s = ws_[i % 3]
            compiled = _gemm[(n // bn, split)](
                xq, xs, w, s, o, m, n, k, bn, bk, split, tma, swap, gather, num_warps=4, num_stages=stages
            )
            return compiled, o.sum(0).to(torch.bfloat16) if split > 1 else o[0]

        label = f"gemm bn={bn:3d} bk={bk} split={split} tma={tma} swap={swap} st={stages} gather={gather}"
        checked = run_checked(call, ref, counter, label)
        if checked is None:
            continue
        compiled, err, t = checked
        rows.append(dict(kind="gemm", n=n, k=k, m=m, bn=bn, bk=bk, split=split, tma=tma, swap=swap,
                         stages=stages, gather=gather, us=t, bf16_us=base, rel_err=err, regs=compiled.n_regs,
                         ptx_ops=opcode_counts(compiled)))  # fmt: skip
        print(f"  {label}: {t:6.1f} us ({base / t:.2f}x) err {err:.1e} regs {compiled.n_regs}", flush=True)
    return rows


def main():
    gen = torch.Generator().manual_seed(0)
    counter = iter(range(10**9))
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    rows = [{"kind": "copy", "tb_s": bw / 1e12}]
    cfgs = {  # (bn, bk, split, tma, swap, stages, gather)
        (14336, 4096): [(64, 256, 1, tma, swap, 4, g) for tma in (0, 1) for swap in (0, 1) for g in (0, 1)]
        + [(128, 128, 1, 1, 1, 4, 1), (128, 256, 1, 1, 1, 3, 1), (64, 256, 1, 1, 1, 6, 1), (32, 512, 1, 1, 1, 3, 1)],
        (4096, 14336): [(64, 256, sk, tma, swap, 4, g) for sk in (2, 4) for tma in (0, 1) for swap in (0, 1)
                        for g in (0, 1)] + [(32, 256, 4, 1, 0, 4, 1), (64, 256, 8, 1, 1, 4, 1)],
    }  # fmt: skip
    for (n, k), configs in cfgs.items():
        for m in (16, 1):
            rows += gemm_rows(n, k, m, gen, counter, configs)
    write_rows("stream_probe.json", rows)


if __name__ == "__main__":
    main()
