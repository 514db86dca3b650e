"""Probe: the MXFP8 small-M GEMM written directly in Triton, timed with CUDA events (torch).

Answers one question for docs/backends.md: is the Pallas kernel's speed a limit of
the algorithm on Hopper, or of the Pallas->Triton lowering? Same algorithm as
``mxfp8_xla.backends.hopper`` (per 32-block f16 MMA of raw E4M3, scaled partial sums).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import triton
import triton.language as tl


@triton.jit
def _mx_gemm(
    x_ptr, xs_ptr, w_ptr, ws_ptr, o_ptr, M, N, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, SWAP: tl.constexpr
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, 32)
    m_ok = offs_m < M
    acc = tl.zeros((BN, BM), tl.float32) if SWAP else tl.zeros((BM, BN), tl.float32)
    for kb in range(0, K // 32):
        xq = tl.load(x_ptr + offs_m[:, None] * K + kb * 32 + offs_k[None, :], mask=m_ok[:, None], other=0)
        w = tl.load(w_ptr + offs_n[:, None] * K + kb * 32 + offs_k[None, :])
        xs = tl.load(xs_ptr + offs_m * (K // 32) + kb, mask=m_ok, other=0).to(tl.int32)
        ws = tl.load(ws_ptr + offs_n * (K // 32) + kb).to(tl.int32)
        fx = (xs << 23).to(tl.float32, bitcast=True)
        fw = (ws << 23).to(tl.float32, bitcast=True)
        a = xq.to(tl.float8e4nv, bitcast=True).to(tl.float16)
        b = w.to(tl.float8e4nv, bitcast=True).to(tl.float16)
        if SWAP:
            acc += tl.dot(b, tl.trans(a)) * (fw[:, None] * fx[None, :])
        else:
            acc += tl.dot(a, tl.trans(b)) * (fx[:, None] * fw[None, :])
    if SWAP:
        acc = tl.trans(acc)
    tl.store(o_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.bfloat16), mask=m_ok[:, None])


def run(m, n, k, bn, swap, warps, stages):
    x = torch.randint(0, 120, (m, k), dtype=torch.uint8, device="cuda")
    xs = torch.full((m, k // 32), 120, dtype=torch.uint8, device="cuda")
    ws_ = [torch.randint(0, 120, (n, k), dtype=torch.uint8, device="cuda") for _ in range(3)]
    wss = [torch.full((n, k // 32), 115, dtype=torch.uint8, device="cuda") for _ in range(3)]
    o = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")
    bm = 16
    grid = (n // bn, triton.cdiv(m, bm))
    i = [0]

    def f():
        i[0] = (i[0] + 1) % 3
        _mx_gemm[grid](x, xs, ws_[i[0]], wss[i[0]], o, m, n, k, bm, bn, swap, num_warps=warps, num_stages=stages)

    return triton.testing.do_bench(f, warmup=50, rep=300, return_mode="median") * 1e3


def main():
    rows = []
    for n, k in [(14336, 4096), (4096, 14336)]:
        m = 16
        wb = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
        xb = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")

        def bf16(xb=xb, wb=wb, j=[0]):  # noqa: B006 (a counter cycling the weight copies)
            j[0] = (j[0] + 1) % 3
            torch.nn.functional.linear(xb, wb[j[0]])

        base = triton.testing.do_bench(bf16, warmup=50, rep=300, return_mode="median") * 1e3
        print(f"N={n} K={k} M={m}: torch bf16 linear {base:.1f} us", flush=True)
        for bn in (32, 64, 128):
            for swap in (False, True):
                for warps, stages in ((4, 4), (4, 6), (8, 4)):
                    try:
                        t = run(m, n, k, bn, swap, warps, stages)
                    except Exception as e:
                        print(f"  bn={bn} swap={swap} w={warps} s={stages}: FAILED {repr(e)[:200]}")
                        continue
                    rows.append(
                        {
                            "n": n,
                            "k": k,
                            "m": m,
                            "bn": bn,
                            "swap": swap,
                            "warps": warps,
                            "stages": stages,
                            "us": t,
                            "bf16_us": base,
                        }
                    )
                    print(
                        f"  bn={bn:3d} swap={swap!s:5} w={warps} s={stages}: {t:6.1f} us ({base / t:.2f}x)", flush=True
                    )
    out = Path(os.environ.get("OUT", "bench_out"))
    out.mkdir(exist_ok=True, parents=True)
    (out / "triton_probe.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
