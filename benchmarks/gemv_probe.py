"""Probe: a CUDA-core (no MMA) MXFP8 GEMV for the fewest rows, against the MMA kernel.

For M = 1..16 rows the GEMM is memory-bound, and ``stream_probe.py`` found the MMA
kernel's time set by its structure (one software-pipelined CTA streaming a few
64-row tiles), not by the decode. A GEMV has no MMA and no shared-memory layout
change: many small programs each load a ``[BN, BK]`` fp8 tile straight into registers
(latency hidden by occupancy, not by pipelining), decode it exactly to float32,
and multiply-accumulate against the ``M`` activation rows (given here decoded, exact
in bf16) on the CUDA cores. ``ACC3`` keeps a ``[M, BN, BK]`` float32 accumulator and
reduces once at the end; otherwise each step reduces over K. Timed with CUDA events
(torch), 3 rotating weight copies, against torch's bf16 linear and the MMA kernel
(``stream_probe._gemm``'s best config) in the same run; checked against float64.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_probe import _blockwise, bench, run_checked, shape_setup, write_rows  # noqa: E402
from stream_probe import _gemm  # noqa: E402


@triton.jit
def _gemv(x_ptr, w_ptr, ws_ptr, o_ptr, N, K: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BN: tl.constexpr,
          BK: tl.constexpr, SPLIT: tl.constexpr, ACC3: tl.constexpr):  # fmt: skip
    n0 = tl.program_id(0) * BN
    s = tl.program_id(1)
    offs_n = n0 + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    offs_kb = tl.arange(0, BK // 32)
    offs_m = tl.arange(0, MP)
    m_ok = offs_m < M
    acc = tl.zeros((MP, BN, BK) if ACC3 else (MP, BN), tl.float32)
    for i in range(0, K // SPLIT, BK):
        k0 = s * (K // SPLIT) + i
        wq = tl.load(w_ptr + offs_n[:, None] * K + k0 + offs_k[None, :])
        ws = tl.load(ws_ptr + offs_n[:, None] * (K // 32) + k0 // 32 + offs_kb[None, :])
        f = (ws.to(tl.int32) << 23).to(tl.float32, bitcast=True)
        w = _blockwise(wq.to(tl.float8e4nv, bitcast=True).to(tl.float32), f, BN, BK)
        x = tl.load(x_ptr + offs_m[:, None] * K + k0 + offs_k[None, :], mask=m_ok[:, None], other=0).to(tl.float32)
        prod = w[None, :, :] * x[:, None, :]
        if ACC3:
            acc += prod
        else:
            acc += tl.sum(prod, axis=2)
    if ACC3:  # noqa: SIM108 (Triton needs a statement-level constexpr branch)
        out = tl.sum(acc, axis=2)
    else:
        out = acc
    ptrs = o_ptr + s * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(ptrs, out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])


def decoded(q, s):
    """Exact float32 values of E4M3 bits ``q`` with block scale bytes ``s``."""
    return q.view(torch.float8_e4m3fn).to(torch.float32) * torch.repeat_interleave(
        torch.exp2(s.to(torch.float32) - 127), 32, dim=1
    )


def measure(n, k, m, gen, counter, configs) -> list[dict]:
    xq, xs, wsets, ref, base = shape_setup(m, n, k, gen, counter)
    xb = decoded(xq, xs).to(torch.bfloat16)  # exact: E4M3 times a power of two
    rows = []
    bn_mma, split_mma = (64, 1) if n >= 8192 else (64, 4)
    o_mma = torch.empty((split_mma, m, n), dtype=torch.float32 if split_mma > 1 else torch.bfloat16, device="cuda")

    def mma(i):
        w, s = wsets[i % 3]
        _gemm[(n // bn_mma, split_mma)](xq, xs, w, s, o_mma, m, n, k, bn_mma, 256, split_mma, 0, 0, 0, num_warps=4,
                                        num_stages=4)  # fmt: skip
        return o_mma.sum(0).to(torch.bfloat16) if split_mma > 1 else o_mma[0]

    t_mma = bench(lambda: mma(next(counter)))
    print(f"N={n} K={k} M={m}: torch bf16 linear {base:.1f} us, MMA kernel {t_mma:.1f} us ({base / t_mma:.2f}x)")
    rows.append(dict(kind="mma", n=n, k=k, m=m, us=t_mma, bf16_us=base))
    mp = triton.next_power_of_2(m)
    for bn, bk, split, acc3, warps in configs:
        o = torch.empty((split, m, n), dtype=torch.float32 if split > 1 else torch.bfloat16, device="cuda")

        def call(i, o=o, cfg=(bn, bk, split, acc3, warps)):
            bn, bk, split, acc3, warps = cfg
            w, s = wsets[i % 3]
            compiled = _gemv[(n // bn, split)](xb, w, s, o, n, k, m, mp, bn, bk, split, acc3, num_warps=warps,
                                               num_stages=1)  # fmt: skip
            return compiled, o.sum(0).to(torch.bfloat16) if split > 1 else o[0]

        label = f"gemv bn={bn:3d} bk={bk:4d} split={split} acc3={acc3} warps={warps}"
        checked = run_checked(call, ref, counter, label)
        if checked is None:
            continue
        _, err, t = checked
        tbs = (n * k * (1 + 1 / 32)) / (t * 1e-6) / 1e12
        rows.append(dict(kind="gemv", n=n, k=k, m=m, bn=bn, bk=bk, split=split, acc3=acc3, warps=warps, us=t,
                         bf16_us=base, mma_us=t_mma, rel_err=err, weight_tb_s=tbs))  # fmt: skip
        print(f"  {label}: {t:6.1f} us ({base / t:.2f}x bf16) {tbs:.2f} TB/s err {err:.1e}", flush=True)
    return rows


def main():
    gen = torch.Generator().manual_seed(0)
    counter = iter(range(10**9))
    rows = []
    for n, k in [(14336, 4096), (4096, 14336)]:
        for m in (1, 2, 4, 8, 16):
            configs = [(bn, bk, 1, 0, w) for bn in (8, 16) for bk in (256, 512) for w in (4,)]
            if m <= 2:
                configs += [(bn, bk, 1, 1, 4) for bn in (4, 8, 16) for bk in (256, 512) if bn * bk * m <= 8192]
            if m == 1:
                configs += [(16, 512, 1, 0, 8), (32, 256, 1, 0, 4), (4, 1024, 1, 0, 4), (8, 512, 2, 0, 4)]
            rows += measure(n, k, m, gen, counter, configs)
    write_rows("gemv_probe.json", rows)


if __name__ == "__main__":
    main()
