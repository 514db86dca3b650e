"""Does the bf16 baseline's weight layout change its speed? ``[N, K]`` (ours) against ``[K, N]`` (``nn.Dense``).

``bench_gemm.py`` and the probes time bf16 as ``jnp.dot(x, w.T)`` with ``w [N, K]``; the Llama example's bf16
model uses ``flax.linen.Dense``, whose kernel is ``[K, N]``. ``llama_step_budget.py`` found the bf16 model's
step slower at batch 1 than at batch 8 on an H200. This times both layouts for each of a Llama-3-8B block's
projections at 1 and 8 rows (loop timer, weights rotating through >= 150 MB, bf16 out).

Usage (device): ``PYTHONPATH=. python3 benchmarks/bf16_layout_probe.py``; JSON to ``$OUT/bf16_layout_probe.json``.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llama import block_config  # noqa: E402
from llama_step_budget import projections  # noqa: E402
from timing import environment, loop_time, rotation_copies, write_json  # noqa: E402


def layout_times(n: int, k: int, m: int) -> dict:
    """Microseconds of ``x [m, k]`` times a bf16 weight stored ``[N, K]`` and stored ``[K, N]``."""
    sets = []
    for i in range(rotation_copies(2 * n * k, least=3)):
        kx, kw = jax.random.split(jax.random.key(i))
        sets.append((jax.random.normal(kx, (m, k), jnp.bfloat16), jax.random.normal(kw, (n, k), jnp.bfloat16)))
    nk = loop_time(lambda x, w: jnp.dot(x, w.T), sets)
    kn = loop_time(lambda x, wt: jnp.dot(x, wt), [(x, w.T.copy()) for x, w in sets])
    return {"nk_us": nk * 1e6, "kn_us": kn * 1e6}


def main() -> None:
    out = {"env": environment(), "rows": []}
    print(out["env"], flush=True)
    for m in (1, 8):
        for name, (n, k) in projections(block_config(1)).items():
            row = {"projection": name, "n": n, "k": k, "m": m, **layout_times(n, k, m)}
            out["rows"].append(row)
            write_json("bf16_layout_probe.json", out)
            print(f"M={m} {name} ({n}, {k}): [N, K] {row['nk_us']:.1f} us, [K, N] {row['kn_us']:.1f} us", flush=True)


if __name__ == "__main__":
    main()
