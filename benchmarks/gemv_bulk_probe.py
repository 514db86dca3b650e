"""Probe: the library's one-row GEMV with its weight streamed by bulk copies into a shared-memory ring.

The library's K-split kernel (``mxfp8_xla/backends/gemv.cu``) streams the fp8 weight at 2.9-3.6 TB/s at the wide
Llama-3-8B shapes, where XLA's bf16 GEMV at one row streams 4.0-4.3 TB/s (the decode step's profile,
docs/benchmark_log.md). Its loads go to registers, one unit of rows ahead. ``gemv_bulk.cu`` is the same kernel (same
arithmetic, same summation order) with each unit's rows fetched by one ``cp.async.bulk`` into a ring of S stages, S
units ahead. For each shape (the six Llama-3-8B projections) and each configuration (rows a unit R, stages S, CTAs
an SM) that fits the SM's shared memory: us a call, its outputs against the library's bit for bit (bf16 and float32
out), then bf16 ``jnp.dot`` on the weight stored ``[N, K]`` and the library's GEMV in the same stretch, and the
weight bytes a second.

``--stream`` (instead): the library's kernel between its floors, at the K = 4096 shapes, us a call in one stretch:
as shipped; with its registers two units ahead (``deep2``, R = 2 or 4 rows a unit, 2-4 CTAs an SM; bit for bit
against the library); its weight stream alone (``stream``, the same loads and grid, no arithmetic); and an empty
kernel on the same launch (``empty``: what a launch costs between the loop's calls).

``--patterns`` (instead): the weight stream alone (no arithmetic) in five load patterns on the one-row kernel's launch
(K / 16 threads splitting K, units of 8 rows, 2 or 3 CTAs an SM): a warp load reading 1, 2, 4 or 8 rows with 16-byte
lane loads, or 8 rows with 8-byte ones (the MMA kernels' B fragments), beside the library's kernel and its own stream.

``--mma8`` (instead): ``gemv_mma8.cu``, up to 8 raw bf16 rows on E4M3 tensor cores, at the K = 4096 shapes and 8 rows:
fed from registers on the one-row kernel's skeleton (4 blocks a warp and one CTA an SM, or ``_b8``: 8 blocks a warp and
two CTAs an SM; each with its weight stream alone, ``_loads``), or fed by a bulk-copy ring (``ring8``, five stage /
warp / CTA configurations): us a call and the float32 output's error against emulation, with bf16 ``jnp.dot`` and the
``hopper`` backend as shipped in the same stretch.

What an H200 answered (fourteenth session; results/gemv_bulk_probe_h200.*, gemv_stream_probe_h200.*,
gemv_patterns_probe_h200.*, gemv_mma8_probe_h200.*, gemv_ring8_probe_h200.*, gemv_mma8_b8_probe_h200.*): every ring
configuration bit for bit the library's and slower (best 23.6 against 20.9 us at (14336, 4096)); the library's kernel
as fast as its loads alone (19.7 against 20.7 us), two units ahead slower; the MMA fragments' 8-byte loads of 8 rows
the slowest of the five patterns (25.0 against 18.4-21.7 us at (14336, 4096)); the 8-row MMA kernel 0.60-0.87x of bf16
fed from registers, 0.58-1.20x from the ring.

``--wide`` (instead; ``--wide16`` in its first call): ``gemv_mma8.cu``'s wide kernels, the weight as the MMA's A operand
with 16-byte loads (fifteenth session; results/gemv_wide*_probe_h200.*): ``wide8_b4`` 1.07-1.32x and 1.25-1.41x of bf16
at 8 rows of (14336, 4096) and (28672, 4096) in five runs, where the Pallas path ran 1.00-1.11x, 0.79-1.06x and
0.83-1.03x at (6144, 4096) and (4096, 4096); every other variant slower (docs/benchmark_log.md,
"Eight rows on the tensor cores"). The library's 3-8-row kernel comes from it.

Run on the device: ``PYTHONPATH=. python3 benchmarks/gemv_bulk_probe.py [--stream | --patterns | --mma8 | --wide]``;
JSON to ``$OUT/gemv_bulk_probe.json``, the PTX and ptxas's register report beside it.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_gemv_probe  # noqa: E402
from cuda_gemv_probe import GEMV_SHAPES, bf16_dot_us  # noqa: E402
from mosaic_sweep import operands, reference, rel_err  # noqa: E402
from timing import environment, failure, loop_time, write_json  # noqa: E402

from mxfp8_xla import MXArray  # noqa: E402
from mxfp8_xla.backends import cuda_gemv, hopper, ptx_launch  # noqa: E402

SOURCE = Path(__file__).with_name("gemv_bulk.cu")
MMA8_SOURCE = Path(__file__).with_name("gemv_mma8.cu")
KERNELS = ((4, 2), (4, 3), (4, 4), (4, 6), (8, 2), (8, 3), (8, 4), (2, 4), (2, 8))
"""(R, S) instantiated in ``gemv_bulk.cu``."""
CONFIGS = (
    *((4, s, p) for s, p in ((2, 4), (3, 4), (3, 3), (4, 3), (4, 2), (6, 2), (2, 1), (3, 1))),
    *((8, s, p) for s, p in ((2, 3), (3, 2), (4, 1))),
    *((2, s, p) for s, p in ((4, 4), (8, 3), (8, 2), (4, 1))),
)
"""(R, S, CTAs an SM) timed where they fit: at K = 4096 (256 threads a CTA) 2-4 CTAs an SM, at K = 14336 one."""
SMEM_PER_SM = 220 * 1024  # of the H100/H200's 228 KB, leaving each CTA's static arrays and reserved kilobyte
SMS = 132


class Bulk(NamedTuple):
    r: int  # weight rows a unit
    s: int  # ring stages
    per_sm: int  # CTAs an SM

    @property
    def label(self) -> str:
        return f"r{self.r}_s{self.s}_x{self.per_sm}"

    def smem(self, k: int) -> int:
        return self.s * self.r * (k + k // 32)

    def fits(self, n: int, k: int) -> bool:
        threads = self.per_sm * k // 16  # resident a SM: at least 16 warps, unless one CTA is more
        return (
            n % self.r == 0
            and self.per_sm * (self.smem(k) + 2048) <= SMEM_PER_SM
            and threads <= 2048
            and (threads >= 512 or self.per_sm == 1)
        )


def compile_ptx(source: Path = SOURCE) -> str:
    """``source`` to PTX for compute_90 (nvcc), ptxas's registers for sm_90 to ``{stem}_ptxas.txt``."""
    return cuda_gemv_probe.compile_ptx(source, stem=source.stem)


def launch(x: jax.Array, w: MXArray, name: str, ptx: str, ctas: int, warps: int, out, smem: int = 0) -> jax.Array:
    """One launch of kernel ``name`` of ``ptx`` on ``x [m, K]`` (raw bf16) and ``w [N, K]`` with the library's
    parameters (weight bytes, scales, x, dims {m, N, K}, out), ``ctas`` CTAs of ``warps`` warps; ``out`` is the output's
    ``(shape, dtype)``."""
    (m, k), n = x.shape, w.shape[0]
    return ptx_launch.launch(
        jax.lax.bitcast_convert_type(w.data, jnp.uint8),
        w.scale,
        x,
        jnp.array([m, n, k], jnp.int32),
        name=name,
        ptx=cuda_gemv.entry_ptx(ptx, name),
        grid=(ctas, 1),
        warps=warps,
        out_shape=out[0],
        out_dtype=out[1],
        smem=smem,
    )


def suffix(out_dtype) -> str:
    return "_bf16" if out_dtype == jnp.bfloat16 else "_f32"


def bulk_gemv(x: jax.Array, w: MXArray, cfg: Bulk, ptx: str, out_dtype=jnp.bfloat16) -> jax.Array:
    """``x [1, K]`` (raw bf16) times ``w [N, K]`` -> ``[1, N]``, one launch of the bulk-copy kernel ``cfg``."""
    n, k = w.shape
    name = f"mxfp8_gemv_bulk_r{cfg.r}_s{cfg.s}{suffix(out_dtype)}"
    ctas = min(n // cfg.r, SMS * cfg.per_sm)
    return launch(x, w, name, ptx, ctas, k // 16 // 32, ((1, n), out_dtype), smem=cfg.smem(k))


def variant(x: jax.Array, w: MXArray, name: str, rows: int, per_sm: int, ptx: str, out_dtype=jnp.bfloat16):
    """One launch of ``gemv_bulk.cu``'s kernel ``name`` on the library's launch (K / 16 threads, a grid of units
    of ``rows`` rows, at most ``per_sm`` CTAs an SM); the deep2 kernels take ``_bf16``/``_f32``, the floors write
    ``uint32``."""
    n, k = w.shape
    deep = name.startswith("mxfp8_gemv_")
    out = ((1, n), out_dtype) if deep else ((k // 16,), jnp.uint32)
    return launch(x, w, name + suffix(out_dtype) if deep else name, ptx, min(n // rows, SMS * per_sm), k // 512, out)


STREAM_VARIANTS = (
    ("mxfp8_gemv_deep2_r2", 2, 4),
    ("mxfp8_gemv_deep2_r2", 2, 3),
    ("mxfp8_gemv_deep2_r4", 4, 2),
    ("mxfp8_gemv_deep2_r4", 4, 3),
    ("mxfp8_stream_r4", 4, 4),
    ("mxfp8_empty", 4, 4),
)
"""``--stream``: (kernel, rows a unit, CTAs an SM); the floors on the library's grid (4 rows, 4 CTAs an SM)."""
PATTERN_VARIANTS = (
    ("mxfp8_stream_r4", 4, 4),
    *(
        (f"mxfp8_stream_p{rpl}x{lb}", 8, per_sm)
        for rpl, lb in ((1, 16), (2, 16), (4, 16), (8, 16), (8, 8))
        for per_sm in (2, 3)
    ),
)
"""``--patterns``: the library's stream, then the weight stream alone in five load patterns (rows a warp load reads,
bytes a lane), units of 8 rows, 2 or 3 CTAs of K / 16 threads an SM."""


def stream(results: dict, ptx: str, variants: tuple = STREAM_VARIANTS) -> None:
    for n, k in [s for s in GEMV_SHAPES if s[1] == 4096]:
        sets = operands(n, k, 1)
        lib = {
            dt: np.asarray(jax.jit(library, static_argnums=2)(*sets[0], dt)).view(np.uint8)
            for dt in (jnp.bfloat16, jnp.float32)
        }
        row = results["stream"][f"({n}, {k})"] = {"bf16_dot_us": bf16_dot_us(sets), "library_us": 0.0, "cells": {}}
        row["library_us"] = loop_time(library, sets) * 1e6
        for name, rows, per_sm in variants:
            label = f"{name.removeprefix('mxfp8_')}_x{per_sm}"
            fn = functools.partial(variant, name=name, rows=rows, per_sm=per_sm, ptx=ptx)
            try:
                cell = {"us": loop_time(fn, sets, iters=20, repeats=3) * 1e6}
                if name.startswith("mxfp8_gemv_"):
                    cell["bits_equal_library"] = all(
                        np.array_equal(
                            np.asarray(jax.jit(functools.partial(fn, out_dtype=dt))(*sets[0])).view(np.uint8), lib[dt]
                        )
                        for dt in (jnp.bfloat16, jnp.float32)
                    )
            except Exception as e:  # noqa: BLE001
                cell = {"error": failure(e)}
            row["cells"][label] = cell
        print(
            f"({n}, {k}): bf16 {row['bf16_dot_us']:.1f} us, library {row['library_us']:.1f} us "
            f"({row['bf16_dot_us'] / row['library_us']:.2f}x); "
            + "; ".join(
                f"{lab} {c['us']:.1f} us"
                + (f" (bits equal: {c['bits_equal_library']})" if "bits_equal_library" in c else "")
                if "us" in c
                else f"{lab}: {c['error']}"
                for lab, c in row["cells"].items()
            ),
            flush=True,
        )
        write_json("gemv_bulk_probe.json", results)


def mma8(x: jax.Array, w: MXArray, name: str, ptx: str, out_dtype=jnp.bfloat16) -> jax.Array:
    """``x [m <= 8, K]`` (raw bf16) times ``w [N, K]`` -> ``[m, N]``: one launch of ``gemv_mma8.cu``'s ``name``
    (4 blocks a warp, K / 4 threads, one CTA an SM; ``_b8`` kernels 8 blocks a warp, two CTAs an SM)."""
    (m, k), n = x.shape, w.shape[0]
    blocks, per_sm = (8, 2) if "_b8" in name else (4, 1)
    return launch(
        x, w, name + suffix(out_dtype), ptx, min(n // 8, SMS * per_sm), k // (32 * blocks), ((m, n), out_dtype)
    )


def wide(x: jax.Array, w: MXArray, name: str, ptx: str, out_dtype=jnp.bfloat16) -> jax.Array:
    """``x [m <= 8, K]`` (raw bf16) times ``w [N, K]`` -> ``[m, N]``: one launch of ``gemv_mma8.cu``'s ``name``
    (``mxfp8_gemv_wide{ROWS}..._b{BPW}``: units of ROWS weight rows, BPW blocks a warp, K / (32 BPW) warps, one CTA an
    SM, or two / four for ``_x2`` / ``_x4``)."""
    (m, k), n = x.shape, w.shape[0]
    rows, blocks = (int(v) for v in re.match(r"mxfp8_gemv_wide(\d+).*?_b(\d+)", name).groups())
    per_sm = int(re.search(r"_x(\d)_", name).group(1)) if "_x" in name else 1
    return launch(
        x, w, name + suffix(out_dtype), ptx, min(n // rows, SMS * per_sm), k // (32 * blocks), ((m, n), out_dtype)
    )


def ring8(x: jax.Array, w: MXArray, s: int, warps: int, per_sm: int, ptx: str, out_dtype=jnp.bfloat16) -> jax.Array:
    """``x [m <= 8, K]`` times ``w [N, K]``: one launch of ``gemv_mma8.cu``'s ring kernel with ``s`` stages,
    ``warps`` warps a CTA, at most ``per_sm`` CTAs an SM."""
    (m, k), n = x.shape, w.shape[0]
    smem = s * (8 * (k + 16) + 8 * (k // 32)) + 2 * warps * 64 * 4
    name = f"mxfp8_gemv_ring8_s{s}{suffix(out_dtype)}"
    return launch(x, w, name, ptx, min(n // 8, SMS * per_sm), warps, ((m, n), out_dtype), smem=smem)


MMA8_VARIANTS = (
    "mxfp8_gemv_mma8_d1",
    "mxfp8_gemv_mma8_d1_loads",
    "mxfp8_gemv_mma8_b8_d1",
    "mxfp8_gemv_mma8_b8_d1_loads",
    *((s, warps, per_sm) for s, warps, per_sm in ((2, 8, 3), (3, 8, 2), (4, 8, 1), (2, 16, 2), (3, 16, 1))),
)
"""``--mma8``: the register-fed kernel and its stream; the ring kernel as (stages, warps, CTAs an SM)."""
WIDE_VARIANTS = tuple(
    f"mxfp8_gemv_{kernel}{mode}"
    for kernel in (
        "wide16_b8",
        "wide8_b4",
        "wide16_free_b8",
        "wide8_free_b4",
        "wide8h_b4",
        "wide8h_b8",
        "wide8h_d2_b8",
        "wide16h_b8",
        "wide8_d2_b4",
        "wide8h_d2_b4",
        "wide8_x2_b8",
    )
    for mode in ("", "_loads")
)
"""``--wide``: units of 16 or 8 weight rows as the MMA's A operand, the warps' sums meeting after a CTA barrier or
(``_free``) by shared-memory atomics, the E4M3 MMA or (``h``) f16 MMAs on operands converted by the kernel, one or
(``_d2``) two units ahead, two CTAs an SM (``_x2``), each with its stream alone (``_loads``); ``--only`` picks some."""


def mma8_part(results: dict, ptx: str, variants: tuple = MMA8_VARIANTS, rows: tuple = (8,)) -> None:
    for n, k in [s for s in GEMV_SHAPES if s[1] == 4096]:
        for m in rows:
            sets = operands(n, k, m)
            ref = reference(*sets[0])
            row = results["mma8"][f"({n}, {k}) m={m}"] = {"bf16_dot_us": bf16_dot_us(sets), "cells": {}}
            row["hopper_us"] = loop_time(lambda x, w: hopper.matmul(x, w, jnp.bfloat16), sets) * 1e6
            for name in variants:
                if isinstance(name, tuple):
                    fn = functools.partial(ring8, s=name[0], warps=name[1], per_sm=name[2], ptx=ptx)
                    name = "mxfp8_gemv_ring8_s{}_w{}_x{}".format(*name)
                else:
                    fn = functools.partial(wide if "_wide" in name else mma8, name=name, ptx=ptx)
                try:
                    cell = {"us": loop_time(fn, sets, iters=20, repeats=3) * 1e6}
                    if not name.endswith("_loads"):
                        out = np.asarray(jax.jit(functools.partial(fn, out_dtype=jnp.float32))(*sets[0]))
                        cell["rel_err_f32_out"] = rel_err(out, ref)
                except Exception as e:  # noqa: BLE001
                    cell = {"error": failure(e)}
                row["cells"][name.removeprefix("mxfp8_gemv_")] = cell
            print(
                f"({n}, {k}) m={m}: bf16 {row['bf16_dot_us']:.1f} us, hopper {row['hopper_us']:.1f} us "
                f"({row['bf16_dot_us'] / row['hopper_us']:.2f}x); "
                + "; ".join(
                    f"{lab} {c['us']:.1f} us ({row['bf16_dot_us'] / c['us']:.2f}x"
                    + (f", error {c['rel_err_f32_out']:.1e})" if "rel_err_f32_out" in c else ")")
                    if "us" in c
                    else f"{lab}: {c['error']}"
                    for lab, c in row["cells"].items()
                ),
                flush=True,
            )
            write_json("gemv_bulk_probe.json", results)


def library(x: jax.Array, w: MXArray, out_dtype=jnp.bfloat16) -> jax.Array:
    return cuda_gemv.matmul_rows(x, w, out_dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="", help="indices into the shapes (default all)")
    parser.add_argument("--stream", action="store_true", help="the library's kernel between its floors instead")
    parser.add_argument("--mma8", action="store_true", help="the 8-row tensor-core kernel instead")
    parser.add_argument("--patterns", action="store_true", help="the weight stream in five load patterns instead")
    parser.add_argument("--wide", action="store_true", help="the wide-load tensor-core kernels instead")
    parser.add_argument("--rows", default="8", help="--wide: activation rows, comma-separated (at most 8)")
    parser.add_argument("--only", default="", help="--wide: the kernels (comma-separated, without mxfp8_gemv_)")
    args = parser.parse_args()
    if args.wide:
        rows = tuple(int(r) for r in args.rows.split(","))
        only = {f"mxfp8_gemv_{v}" for v in args.only.split(",")} if args.only else set(WIDE_VARIANTS)
        variants = tuple(v for v in WIDE_VARIANTS if v in only)
        mma8_part({"env": environment(), "mma8": {}}, compile_ptx(MMA8_SOURCE), variants, rows)
        return
    if args.patterns:
        stream({"env": environment(), "stream": {}}, compile_ptx(), PATTERN_VARIANTS)
        return
    if args.mma8:
        mma8_part({"env": environment(), "mma8": {}}, compile_ptx(MMA8_SOURCE))
        return
    shapes = [GEMV_SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else list(GEMV_SHAPES)
    ptx = compile_ptx()
    if args.stream:
        stream({"env": environment(), "stream": {}}, ptx)
        return
    configs = [Bulk(*c) for c in CONFIGS]
    results = {"env": environment(), "shapes": {}}
    for n, k in shapes:
        sets = operands(n, k, 1)
        ref = reference(*sets[0])
        lib = {
            dt: np.asarray(jax.jit(library, static_argnums=2)(*sets[0], dt)).view(np.uint8)
            for dt in (jnp.bfloat16, jnp.float32)
        }
        cells = {}
        for cfg in configs:
            if not cfg.fits(n, k):
                continue
            try:
                same = all(
                    np.array_equal(
                        np.asarray(jax.jit(lambda x, w, c=cfg, d=dt: bulk_gemv(x, w, c, ptx, d))(*sets[0])).view(
                            np.uint8
                        ),
                        lib[dt],
                    )
                    for dt in (jnp.bfloat16, jnp.float32)
                )
                us = loop_time(lambda x, w, c=cfg: bulk_gemv(x, w, c, ptx), sets, iters=20, repeats=3) * 1e6
                cells[cfg.label] = {"cfg": list(cfg), "us": us, "bits_equal_library": same}
            except Exception as e:  # noqa: BLE001
                cells[cfg.label] = {"cfg": list(cfg), "error": failure(e)}
        row = results["shapes"][f"({n}, {k})"] = {"cells": cells}
        row["bf16_dot_us"] = bf16_dot_us(sets)
        row["library_us"] = loop_time(library, sets) * 1e6
        row["rel_err_library_f32_out"] = rel_err(lib[jnp.float32].view(np.float32), ref)
        timed = {lab: c for lab, c in cells.items() if "us" in c}
        best = min(timed, key=lambda lab: timed[lab]["us"]) if timed else None
        nbytes = n * k * (1 + 1 / 32)
        print(
            f"({n}, {k}): bf16 {row['bf16_dot_us']:.1f} us, library {row['library_us']:.1f} us "
            f"({row['bf16_dot_us'] / row['library_us']:.2f}x, {nbytes / row['library_us'] / 1e6:.2f} TB/s)",
            flush=True,
        )
        for lab, c in sorted(cells.items(), key=lambda kv: kv[1].get("us", 1e9)):
            if "us" in c:
                print(
                    f"    {lab:12s} {c['us']:7.1f} us  {row['bf16_dot_us'] / c['us']:.2f}x of bf16  "
                    f"{row['library_us'] / c['us']:.2f}x of library  {nbytes / c['us'] / 1e6:.2f} TB/s  "
                    f"bits equal: {c['bits_equal_library']}",
                    flush=True,
                )
            else:
                print(f"    {lab:12s} {c['error']}", flush=True)
        row["best"] = best
        write_json("gemv_bulk_probe.json", results)


if __name__ == "__main__":
    main()
