"""Driver for Nsight Compute: the GEMV kernels of ``gemv.cu`` at (14336, 4096), each run once inside a profiler range.

The question it answers: what bounds the weight stream of each kernel (docs/benchmark_log.md, "Shared memory and the
tensor-core GEMV's stream": the kernels' speeds line up with the weight bytes each SM keeps in flight, 64 KB for the
one-row kernel and 32 KB for the two-row and tensor-core ones, but not every variant fits that reading). The profile
gives each kernel's DRAM throughput, its schedulers' issue rate, its eligible and achieved warps, and its shared-memory
carveout, and why its warps stall, by cause (``STALLS``; asked for since the eighteenth session's run, not in its
report). Run on the device with ``benchmarks/ncu_gemv.sh`` (the ncu command line; the report goes straight to a file,
since a pipe cut by the time limit loses it). ``--table REPORT`` prints a report's kernels, one line each (``table``).
The eighteenth session's answer (results/ncu_gemv_table_h200.txt): our kernels issue an instruction on 59-76% of
scheduler cycles where XLA's bf16 GEMM issues on 6-22%; the one-row kernel, at 0.76, leaves a scheduler idle one cycle
in four, and the variants two units ahead issue as often and stream slower. The nineteenth's
(results/ncu_gemv_stalls_table_h200.txt, ncu_gemv_mma_pipes_h200.txt): the tensor-core kernel's warps waited on a
math pipe, its ALU pipe, the busiest; after fewer ALU instructions there, on its barrier
(results/ncu_gemv_alu_table_h200.txt).

Profiled, in this order (printed before the range starts, so the report's kernels can be matched to them): bf16
``jnp.dot`` and the library's route (``hopper.matmul``) at 1, 2 and 8 rows, the probe's two-row kernels
(``cuda_gemv_probe.ROW_CONFIGS``, one nvcc build: units of 4 and of 8 weight rows), and at (4096, 14336) one row, bf16
and the library (896 threads, one CTA an SM). Everything is compiled and run once before the range (the builds two
units ahead that the eighteenth and nineteenth sessions profiled are in dae2a31's probe).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_gemv_probe as probe  # noqa: E402
from mosaic_sweep import dequant_bf16, operands  # noqa: E402
from ncu_small_m import profile_once  # noqa: E402

from mxfp8_xla.backends import hopper  # noqa: E402

WIDE = (14336, 4096)
DEEP = (4096, 14336)


def ops(wide: tuple[int, int] = WIDE, deep: tuple[int, int] = DEEP) -> list[tuple[str, Callable, tuple]]:
    """(label, jitted function, arguments) for every profiled op, in the order they run."""
    bf16_dot = jax.jit(lambda x, wb: jnp.dot(x, wb.T))
    library = jax.jit(lambda x, w: hopper.matmul(x, w, jnp.bfloat16))
    out = []
    for (n, k), ms in ((wide, (1, 2, 8)), (deep, (1,))):
        for m in ms:
            x, w = operands(n, k, m, copies=1)[0]
            out.append((f"({n}, {k}) M={m} bf16 jnp.dot", bf16_dot, (x, dequant_bf16(w))))
            out.append((f"({n}, {k}) M={m} library", library, (x, w)))
            for cfg in probe.ROW_CONFIGS[2] if m == 2 else ():
                fn = jax.jit(functools.partial(probe.gemv, cfg=cfg))
                out.append((f"({n}, {k}) M={m} probe {probe.label_of(cfg)}", fn, (x, w)))
    return out


# (column, the report's metric name, its unit): the throughput and the issue rate, how many warps could issue, the
# caches. "Memory Throughput" is in the report twice, as a % of peak and in bytes/s: the unit tells them apart.
METRICS = (
    ("us", "Duration", "us"),
    ("DRAM %", "DRAM Throughput", "%"),
    ("memory", "Memory Throughput", "[GT]byte/s"),
    ("issued/sched", "Issued Warp Per Scheduler", ""),
    ("eligible/sched", "Eligible Warps Per Scheduler", "warp"),
    ("cycles/issue", "Warp Cycles Per Issued Instruction", "cycle"),
    ("warps/SM", "Achieved Active Warps Per SM", "warp"),
    ("L1 hit %", "L1/TEX Hit Rate", "%"),
    ("smem KB", "Shared Memory Configuration Size", "Kbyte"),
    ("regs", "Registers Per Thread", "register/thread"),
)


# Why warps wait, by cause: cycles stalled for each instruction issued (ncu's Warp State chart, less "selected", the
# cycle a warp issues), asked for by ncu_gemv.sh through --metrics (`--ncu-metrics` prints the list, PIPES' with it);
# the table's "stalls" column shows the largest three.
STALLS = (
    "barrier",
    "long_scoreboard",
    "short_scoreboard",
    "wait",
    "math_pipe_throttle",
    "mio_throttle",
    "lg_throttle",
    "not_selected",
    "dispatch_stall",
    "no_instruction",
    "branch_resolving",
)


def stall_metric(reason: str) -> str:
    return f"smsp__average_warps_issue_stalled_{reason}_per_issue_active.ratio"


# How busy each execution pipe keeps its SMs, % of peak (ncu's Compute Workload Analysis, by pipe): the nineteenth
# session found the tensor-core kernel bound by its ALU pipe (conversions, shifts, selects, compares), not by its
# tensor pipe (results/ncu_gemv_mma_pipes_h200.txt). The table shows them as "<pipe> %" columns.
PIPES = ("alu", "fma", "fmaheavy", "lsu", "tensor")


def pipe_metric(pipe: str) -> str:
    return f"sm__inst_executed_pipe_{pipe}.avg.pct_of_peak_sustained_active"


def ncu_metrics() -> str:
    """The ``ncu --metrics`` list the table reads beyond ncu's sections: the stall causes and the pipes."""
    return ",".join([*map(stall_metric, STALLS), *map(pipe_metric, PIPES)])


def metric_value(body: str, metric: str) -> str:
    """The value of a ``--metrics`` line of one kernel's report (``metric [unit] value``), "" where it is absent."""
    found = re.search(rf"^ +{re.escape(metric)} +(?:\S+ +)?([\d.,]+)$", body, re.M)
    return found.group(1) if found else ""


def table(report: str, top: int = 3) -> list[dict[str, str]]:
    """One row per kernel of an ``ncu`` text report (the sections and metrics ncu_gemv.sh asks for), in the order
    they ran: the kernel's name, its launch, each of ``METRICS`` ("" where the report lacks it; bytes/s with their
    unit), each pipe's busy % (``PIPES``), and under "stalls" its ``top`` stall causes, cycles an issued instruction,
    largest first."""
    rows = []
    for head, body in re.findall(
        r"^  (\S+ \([^\n]*?\)x\([^\n]*?\)), Context[^\n]*\n(.*?)(?=^  \S+ \([^\n]*?\)x\(|\Z)", report, re.M | re.S
    ):
        name, launch = head.split(" ", 1)
        row = {"kernel": name, "launch": launch}
        for column, metric, unit in METRICS:
            found = re.search(rf"^ +{re.escape(metric)} +({unit}) *([\d.,]+)$", body, re.M)
            value = found.group(2).replace(",", "") if found else ""
            row[column] = f"{value} {found.group(1)[0]}B/s" if found and "byte/s" in unit else value
        for pipe in PIPES:
            row[f"{pipe} %"] = metric_value(body, pipe_metric(pipe))
        stalls = []
        for reason in STALLS:
            if value := metric_value(body, stall_metric(reason)):
                stalls.append((float(value.replace(",", "")), reason))
        row["stalls"] = ", ".join(f"{reason} {cycles:.2f}" for cycles, reason in sorted(stalls, reverse=True)[:top])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, help="print the table of this ncu report (ncu_gemv.txt) and stop")
    parser.add_argument("--ncu-metrics", action="store_true", help="print the stall and pipe metrics for ncu --metrics")
    args = parser.parse_args()
    if args.ncu_metrics:
        print(ncu_metrics())
        return
    if args.table:
        rows = table(args.table.read_text())
        columns = ["kernel", "launch", *(c for c, _, _ in METRICS), *(f"{pipe} %" for pipe in PIPES), "stalls"]
        print(" | ".join(columns))
        for row in rows:
            print(" | ".join(row[c] for c in columns))
        return
    probe.PTX = probe.compile_ptx()
    profile_once(ops())


if __name__ == "__main__":
    main()
