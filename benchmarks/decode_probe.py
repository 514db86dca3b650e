"""Probe: which E4M3 -> bf16 tile decode keeps the small-M MXFP8 GEMM fastest on Hopper.

The ``hopper`` backend's small-M kernel decodes every ``[bn, bk]`` fp8 weight tile to
bf16 in registers before one MMA. This script writes that kernel directly in Triton
(timed with CUDA events through torch; the Pallas kernel lowers to the same Triton)
with interchangeable tile decodes, and prints for each the time, the bf16 baseline of
the same run, the error against a float64 reference, and the kernel's PTX opcode
counts (conversions are quarter-rate on SM90; bit operations are not):

- ``convert``: fp8 -> float32 (hardware converts), times ``2**(s-127)``, -> bf16 (the shipped decode)
- ``f32_bits``: float32 bits built with integer ops (``e4m3 * 2**-120``, exact for subnormals too),
  times ``2**(s-7)``, bf16 = the top 16 bits (exact: the product has 4 significant bits)
- ``bf16_bits``: bf16 bits built with integer ops, one bf16 multiply by ``2**(s-7)``
- ``noscale``: fp8 -> bf16 ignoring the scales (wrong result; the ceiling of any decode)

Probe-only simplifications: scale bytes in (0, 135), where ``2**(s-7)`` is a normal float.
"""

from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

import torch
import triton
import triton.language as tl

DECODES = ("convert", "f32_bits", "bf16_bits", "noscale")


@triton.jit
def _blockwise(v, f, R: tl.constexpr, BK: tl.constexpr):
    """``v [R, BK]`` times ``f [R, BK // 32]`` broadcast over each 32-column block."""
    return tl.reshape(tl.reshape(v, (R, BK // 32, 32)) * f[:, :, None], (R, BK))


@triton.jit
def _decode(q, s, R: tl.constexpr, BK: tl.constexpr, DECODE: tl.constexpr):
    """``q`` uint8 E4M3 bits ``[R, BK]``, ``s`` uint8 scale bytes ``[R, BK // 32]`` -> bf16."""
    if DECODE == "convert":
        f = (s.to(tl.int32) << 23).to(tl.float32, bitcast=True)
        v = q.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        out = _blockwise(v, f, R, BK).to(tl.bfloat16)
    elif DECODE == "f32_bits":
        u = q.to(tl.uint32)
        v = (((u & 0x80) << 24) | ((u & 0x7F) << 20)).to(tl.float32, bitcast=True)
        f = ((s.to(tl.int32) + 120) << 23).to(tl.float32, bitcast=True)
        p = _blockwise(v, f, R, BK).to(tl.uint32, bitcast=True)
        out = (p >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif DECODE == "bf16_bits":
        u = q.to(tl.uint16)
        v = (((u & 0x80) << 8) | ((u & 0x7F) << 4)).to(tl.bfloat16, bitcast=True)
        f = ((s.to(tl.int32) + 120) << 7).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        out = _blockwise(v, f, R, BK)
    else:
        out = q.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
    return out


@triton.jit
def _gemm(x_ptr, xs_ptr, w_ptr, ws_ptr, o_ptr, M, N, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
          BK: tl.constexpr, DECODE: tl.constexpr):  # fmt: skip
    offs_m = tl.arange(0, BM)
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    offs_kb = tl.arange(0, BK // 32)
    m_ok = offs_m < M
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, K, BK):
        xq = tl.load(x_ptr + offs_m[:, None] * K + k0 + offs_k[None, :], mask=m_ok[:, None], other=0)
        xs = tl.load(xs_ptr + offs_m[:, None] * (K // 32) + k0 // 32 + offs_kb[None, :], mask=m_ok[:, None], other=1)
        wq = tl.load(w_ptr + offs_n[:, None] * K + k0 + offs_k[None, :])
        ws = tl.load(ws_ptr + offs_n[:, None] * (K // 32) + k0 // 32 + offs_kb[None, :])
        x = _decode(xq, xs, BM, BK, "convert")
        w = _decode(wq, ws, BN, BK, DECODE)
        acc += tl.dot(x, tl.trans(w))
    tl.store(o_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.bfloat16), mask=m_ok[:, None])


def e4m3_value(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.float8_e4m3fn).to(torch.float64)


def reference(xq, xs, wq, ws):
    """float64 ``x @ w.T`` from the bits, computed independently of the kernel."""
    x = e4m3_value(xq) * torch.repeat_interleave(2.0 ** (xs.to(torch.float64) - 127), 32, dim=1)
    w = e4m3_value(wq) * torch.repeat_interleave(2.0 ** (ws.to(torch.float64) - 127), 32, dim=1)
    return x @ w.T


def opcode_counts(compiled) -> dict[str, int]:
    """The most frequent PTX instructions of a compiled kernel (static counts, first two name parts)."""
    ops = re.findall(r"^\s+(?:@%p\d+\s+)?([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)?)", compiled.asm["ptx"], re.M)
    return dict(collections.Counter(ops).most_common(14))


def random_operands(m, n, k, copies, gen):
    def e4m3(shape):  # finite E4M3 bytes (0x7F / 0xFF are NaN)
        b = torch.randint(0, 255, shape, generator=gen, dtype=torch.int32)
        return torch.where((b & 0x7F) == 0x7F, b - 1, b).to(torch.uint8)

    xq, xs = e4m3((m, k)), torch.randint(110, 130, (m, k // 32), generator=gen).to(torch.uint8)
    ws = [(e4m3((n, k)), torch.randint(100, 130, (n, k // 32), generator=gen).to(torch.uint8)) for _ in range(copies)]
    return xq, xs, ws


def bench(fn) -> float:
    """Median microseconds of ``fn()`` (CUDA events, triton.testing.do_bench)."""
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median") * 1e3


def shape_setup(m: int, n: int, k: int, gen: torch.Generator, counter):
    """GPU operands (3 weight copies), their float64 reference, and torch's bf16 linear time at this shape."""
    xq, xs, wsets = random_operands(m, n, k, 3, gen)
    ref = reference(xq, xs, *wsets[0]).cuda()
    wb = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
    xb = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    base = bench(lambda: torch.nn.functional.linear(xb, wb[next(counter) % 3]))
    return xq.cuda(), xs.cuda(), [(a.cuda(), b.cuda()) for a, b in wsets], ref, base


def run_checked(call, ref: torch.Tensor, counter, label: str):
    """``call(i) -> (compiled, out)``: check ``call(0)`` against ``ref``, then time it; None if it fails."""
    try:
        compiled, out = call(0)
        torch.cuda.synchronize()
        err = float(torch.linalg.norm(out.to(torch.float64) - ref) / torch.linalg.norm(ref))
        t = bench(lambda: call(next(counter)))
    except Exception as e:  # report and go on: this is a probe
        print(f"  {label}: FAILED {repr(e)[:300]}", flush=True)
        return None
    return compiled, err, t


def write_rows(name: str, rows: list[dict]) -> None:
    out = Path(os.environ.get("OUT", "bench_out"))
    out.mkdir(exist_ok=True, parents=True)
    (out / name).write_text(json.dumps(rows, indent=1))


def measure_shape(n: int, k: int, m: int, bns: tuple[int, ...], gen: torch.Generator, counter) -> list[dict]:
    """Every decode and tile at one shape, against torch's bf16 linear (3 rotating weight copies each)."""
    xq, xs, wsets, ref, base = shape_setup(m, n, k, gen, counter)
    print(f"N={n} K={k} M={m}: torch bf16 linear {base:.1f} us", flush=True)
    rows = []
    for bn, bk, decode in [(bn, bk, d) for bn in bns for bk in (128, 256) for d in DECODES]:
        o = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")

        def call(i, o=o, bn=bn, bk=bk, decode=decode):
            wq, ws = wsets[i % 3]
            return _gemm[(n // bn,)](xq, xs, wq, ws, o, m, n, k, 16, bn, bk, decode, num_warps=4, num_stages=4), o

        checked = run_checked(call, ref, counter, f"bn={bn} bk={bk} {decode}")
        if checked is None:
            continue
        compiled, err, t = checked
        ops = opcode_counts(compiled)
        row = dict(n=n, k=k, m=m, bn=bn, bk=bk, decode=decode, us=t, bf16_us=base, rel_err=err)
        rows.append(row | {"regs": compiled.n_regs, "spills": compiled.n_spills, "ptx_ops": ops})
        print(
            f"  bn={bn:3d} bk={bk} {decode:9s} {t:6.1f} us ({base / t:.2f}x) err {err:.1e} "
            f"regs {compiled.n_regs} spills {compiled.n_spills}  {ops}",
            flush=True,
        )
    return rows


def main():
    gen = torch.Generator().manual_seed(0)
    counter = iter(range(10**9))
    rows = []
    for n, k, bns in [(14336, 4096, (128, 64)), (4096, 14336, (64, 32))]:
        for m in (1, 16):
            rows += measure_shape(n, k, m, bns, gen, counter)
    write_rows("decode_probe.json", rows)


if __name__ == "__main__":
    main()
