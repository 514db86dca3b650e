"""Plot bench_gemm.json: speed of each variant relative to bf16 jnp.dot, per layer shape.

Usage: python benchmarks/plot_gemm.py SRC.json [SRC.json ...] DST.png, e.g.
``benchmarks/results/bench_gemm_h100.json docs/bench_gemm_h100.png``; the rows of several
runs on one device (e.g. a run split by shape) are plotted together.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(*paths: str) -> None:
    *srcs, dst = paths
    runs = []
    for src in srcs:
        with open(src) as f:
            runs.append(json.load(f))
    data = runs[0]
    devices = {run["env"]["device"] for run in runs}
    if len(devices) != 1:
        raise SystemExit(f"plot_gemm: the runs come from different devices {sorted(devices)}; plot them apart")
    rows = [r for run in runs for r in run["rows"]]
    shapes = sorted({(r["n"], r["k"]) for r in rows}, key=lambda s: (s[1], s[0]))
    variants = [v for v in ("hopper", "xla_dequant", "scaled_dot", "fp8_tensor") if any(v in r for r in rows)]
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.6), sharey=True)
    for ax, (n, k) in zip(axes, shapes, strict=True):
        rs = sorted((r for r in rows if (r["n"], r["k"]) == (n, k)), key=lambda r: r["m"])
        ms = [r["m"] for r in rs]
        for v in variants:
            pts = [(r["m"], r["bf16"]["us"] / r[v]["us"]) for r in rs if "us" in r.get(v, {})]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=v)
        ax.axhline(1.0, color="gray", lw=1, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms, [str(m) for m in ms])
        ax.set_title(f"N={n}, K={k}")
        ax.set_xlabel("M (tokens)")
    axes[0].set_ylabel("speed vs bf16 jnp.dot (x)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"MXFP8 GEMM on {data['env']['device']} (jax {data['env']['jax']}), device time", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:])
