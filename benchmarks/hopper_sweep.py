"""Tile sweeps for the Hopper Pallas GEMM (M <= 64), the 64 < M <= 512 and large-M candidates, on one GPU.

Prints, per shape, the device time of each kernel config next to bf16 ``jnp.dot`` and
writes ``hopper_sweep.json``. Used to pick ``hopper.default_config``. ``--small``: the
K = 4096 shapes at M = 1 and 16, end to end (``hopper_small_retune.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import device_time, environment, loop_time, rotation_copies, write_json  # noqa: E402

import mxfp8_xla as mx  # noqa: E402
from mxfp8_xla.backends import hopper, pallas_quantize  # noqa: E402

SHAPES = [(14336, 4096), (4096, 14336)]
SETS = 8
WEIGHT_COPIES = 4


def make_sets(m, n, k):
    keys = jax.random.split(jax.random.key(m * 7 + n + k), 2 * SETS)
    ws = [jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02 for i in range(WEIGHT_COPIES)]
    xs = [jax.random.normal(keys[SETS + i], (m, k), jnp.bfloat16) for i in range(SETS)]
    wq = [mx.quantize(w) for w in ws]
    return xs, ws, wq


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    results = {"env": environment(), "rows": []}
    print(results["env"], flush=True)
    configs = [
        hopper.KernelConfig(bm=16, bn=bn, bk=bk, split_k=sk, num_warps=4, num_stages=4, tile_dequant=True)
        for bn in (32, 64, 128)
        for bk in (128, 256)
        for sk in (1, 2, 4)
    ] + [hopper.KernelConfig(bm=16, bn=64, bk=64, split_k=2, num_warps=4, num_stages=4)]
    ms = (16,)
    if "--mtiles" in sys.argv:  # 32 and 64 rows: one tall tile or several 16-row tiles
        ms = (32, 64)
        configs = [
            hopper.KernelConfig(bm=bm, bn=bn, bk=128, split_k=sk, num_warps=4, num_stages=4, tile_dequant=True)
            for bm in (16, 32, 64)
            for bn, sk in ((128, 1), (64, 2))
        ]
    if "--retune" in sys.argv:  # the shipped default against the best tiles of benchmarks/stream_probe.py
        configs = [None] + [
            hopper.KernelConfig(bm=16, bn=bn, bk=bk, split_k=sk, num_warps=4, num_stages=st, tile_dequant=True)
            for bn, bk, sk, st in [
                (64, 256, 1, 4), (64, 256, 1, 3), (128, 256, 1, 3), (64, 256, 2, 4), (64, 256, 4, 4), (64, 128, 4, 4),
                (32, 256, 4, 4),
            ]
        ]  # fmt: skip
    if "--tune" in sys.argv:  # warps/stages around the best tile config
        configs = [
            hopper.KernelConfig(bm=16, bn=bn, bk=bk, split_k=sk, num_warps=w, num_stages=st, tile_dequant=True)
            for bn, sk in ((128, 1), (64, 2))
            for bk in (128, 256)
            for w, st in ((4, 3), (4, 5), (8, 3), (8, 5))
        ]
    for n, k in SHAPES:
        for m in ms:
            xs, ws, wq = make_sets(m, n, k)
            preq = "--preq" in sys.argv
            bf16 = device_time(
                lambda x, w: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16),
                [(xs[i], ws[i % WEIGHT_COPIES]) for i in range(SETS)],
            )
            row = {"m": m, "n": n, "k": k, "bf16_us": bf16 * 1e6, "configs": []}
            ref = mx.mxfp8_matmul(xs[0], wq[0], out_dtype=jnp.float32, backend="emulation")
            best = None
            for cfg in configs:
                cfg = cfg or hopper.default_config(m, n, k)
                if cfg.check(m, n, k) or (n // cfg.bn) * cfg.split_k > 1024:
                    continue
                try:
                    xs_in = [mx.quantize(x) for x in xs] if preq else xs
                    fn = jax.jit(lambda x, w, cfg=cfg: hopper.matmul_2d(x, w, jnp.bfloat16, cfg))
                    err = rel(hopper.matmul_2d(xs_in[0], wq[0], jnp.float32, cfg), ref)
                    t = device_time(
                        lambda x, w, fn=fn: fn(x, w), [(xs_in[i], wq[i % WEIGHT_COPIES]) for i in range(SETS)]
                    )
                except Exception as e:  # report and go on: this is a sweep
                    row["configs"].append({"cfg": str(cfg), "error": repr(e)[:400]})
                    print(f"  {cfg}: FAILED {repr(e)[:300]}", flush=True)
                    continue
                row["configs"].append({"cfg": str(cfg), "us": t * 1e6, "rel_err": err})
                print(f"  {t * 1e6:7.1f} us ({bf16 / t:.2f}x) err {err:.1e}  {cfg}", flush=True)
                if best is None or t < best[0]:
                    best = (t, cfg, err)
            if best:
                xs1 = [mx.quantize(x[:1]) if preq else x[:1] for x in xs]
                best_cfg = best[1]
                t1 = device_time(
                    lambda x, w, cfg=best_cfg: hopper.matmul_2d(x, w, jnp.bfloat16, cfg),
                    [(xs1[i], wq[i % WEIGHT_COPIES]) for i in range(SETS)],
                )
                b1 = device_time(
                    lambda x, w: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16),
                    [(xs[i][:1], ws[i % WEIGHT_COPIES]) for i in range(SETS)],
                )
                row["m1"] = {"bf16_us": b1 * 1e6, "best_us": t1 * 1e6}
                if "--retune" in sys.argv:  # end to end: the backend's activation quantizer + the kernel
                    row["e2e"] = {}
                    for label, c in (("default", hopper.default_config(m, n, k)), ("best", best_cfg)):
                        t_e2e = device_time(
                            lambda x, w, c=c: hopper.matmul_2d(hopper.quantize_activations(x), w, jnp.bfloat16, c),
                            [(xs[i], wq[i % WEIGHT_COPIES]) for i in range(SETS)],
                        )
                        row["e2e"][label] = t_e2e * 1e6
                        print(f"   end to end, {label}: {t_e2e * 1e6:.1f} us ({bf16 / t_e2e:.2f}x)", flush=True)
                print(f"   M=1 with that config: {t1 * 1e6:.1f} us vs bf16 {b1 * 1e6:.1f} ({b1 / t1:.2f}x)")
                print(
                    f"M={m:5d} N={n:6d} K={k:6d}  bf16 {bf16 * 1e6:7.1f} us  best {best[0] * 1e6:7.1f} us "
                    f"({bf16 / best[0]:.2f}x) rel_err {best[2]:.1e}  {best[1]}",
                    flush=True,
                )
            results["rows"].append(row)
            write_json("hopper_sweep.json", results)


def large_m_probe():
    """M=2048: the Pallas kernel with larger tiles, x raw or pre-quantized, vs bf16 and XLA dequant."""
    rows = []
    for n, k in [(14336, 4096)]:
        m = 2048
        xs, ws, wq = make_sets(m, n, k)
        sets = [(xs[i], ws[i % WEIGHT_COPIES], wq[i % WEIGHT_COPIES]) for i in range(SETS)]
        base = device_time(lambda x, w, q: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16), sets)
        print(f"large M={m} N={n} K={k}: bf16 {base * 1e6:.1f} us", flush=True)
        cands = {
            "xla_dequant": lambda x, w, q: jnp.dot(
                mx.dequantize(mx.quantize(x), jnp.bfloat16),
                mx.dequantize(q, jnp.bfloat16).T,
                preferred_element_type=jnp.bfloat16,
            ),
        }
        for bm, bn, bk, nw, st in [
            (64, 128, 64, 4, 3),
            (128, 128, 64, 8, 3),
            (128, 256, 64, 8, 3),
            (64, 128, 128, 4, 4),
            (128, 128, 32, 8, 4),
        ]:
            cfg = hopper.KernelConfig(bm=bm, bn=bn, bk=bk, num_warps=nw, num_stages=st, tile_dequant=True)
            cands[f"raw {cfg}"] = lambda x, w, q, cfg=cfg: hopper.matmul_2d(x, q, jnp.bfloat16, cfg)
            cands[f"preq {cfg}"] = lambda x, w, q, cfg=cfg: hopper.matmul_2d(
                pallas_quantize.quantize_2d(x, bm=64, bk=128), q, jnp.bfloat16, cfg
            )
        for name, fn in cands.items():
            try:
                t = device_time(fn, sets)
                print(f"  {name}: {t * 1e6:.1f} us ({base / t:.2f}x)", flush=True)
                rows.append({"name": name, "us": t * 1e6, "ratio": base / t})
            except Exception as e:
                print(f"  {name}: FAILED {repr(e)[:300]}", flush=True)
                rows.append({"name": name, "error": repr(e)[:400]})
    return rows


SMALL_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (14336, 4096)]


def small_retune():
    """The Triton kernel's tiles at the K = 4096 shapes, end to end (the backend's activation quantizer,
    the kernel, the split-K sum), each weight read from HBM (>= 150 MB rotated), loop timer: the whole
    grid at M = 16, then the default and the M = 16 winner at M = 1.

    ``default_config`` was picked on an H100 at the two large shapes; this asks whether other tiles
    serve the smaller weights better on the GPU at hand.
    """
    rows = []
    grid = [
        hopper.KernelConfig(bm=16, bn=bn, bk=bk, split_k=sk, num_warps=4, num_stages=4, tile_dequant=True)
        for bn in (32, 64, 128)
        for bk in (128, 256)
        for sk in (1, 2, 4, 8)
    ]
    for n, k in SMALL_SHAPES:
        copies = rotation_copies(n * k, 4)
        keys = jax.random.split(jax.random.key(n + k), copies + 1)
        ws = [jax.random.normal(keys[i], (n, k), jnp.bfloat16) * 0.02 for i in range(copies)]
        wq = [mx.quantize(w) for w in ws]
        best = None
        for m in (16, 1):
            xs = [jax.random.normal(jax.random.fold_in(keys[-1], i), (m, k), jnp.bfloat16) for i in range(copies)]
            dot = jax.jit(lambda x, w: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16))
            bf16 = loop_time(dot, [*zip(xs, ws, strict=True)])
            print(f"== M={m} N={n} K={k}: bf16 jnp.dot {bf16 * 1e6:.1f} us ({copies} sets)", flush=True)
            ref = mx.mxfp8_matmul(xs[0], wq[0], out_dtype=jnp.float32, backend="emulation")
            default = hopper.default_config(m, n, k)
            others = grid if best is None else [best[1]]
            configs = [default] + [c for c in others if c != default]
            for cfg in configs:
                if cfg.check(m, n, k) or (n // cfg.bn) * cfg.split_k > 1024:
                    continue
                label = dict(m=m, n=n, k=k, cfg=str(cfg), default=cfg == default, bf16_us=bf16 * 1e6)
                fn = jax.jit(lambda x, w, c=cfg: hopper.matmul_2d(hopper.quantize_activations(x), w, jnp.bfloat16, c))
                try:
                    err = rel(fn(xs[0], wq[0]).astype(jnp.float32), ref)
                    t = loop_time(fn, [*zip(xs, wq, strict=True)])
                except Exception as e:  # report and go on: this is a sweep
                    print(f"  {cfg}: FAILED {repr(e)[:300]}", flush=True)
                    rows.append(dict(label, error=repr(e)[:400]))
                    continue
                tag = " (default)" if cfg == default else ""
                print(f"  {t * 1e6:7.1f} us ({bf16 / t:.2f}x) err {err:.1e}  {cfg}{tag}", flush=True)
                rows.append(dict(label, us=t * 1e6, rel_err=err))
                if m == 16 and (best is None or t < best[0]):
                    best = (t, cfg)
            write_json("hopper_small_retune.json", {"env": environment(), "rows": rows})
    return rows


def mid_m_probe():
    """64 < M <= 512: the shipped decode-then-cuBLAS path against the Pallas GEMM with taller tiles, end to end."""
    rows = []
    for n, k in SHAPES:
        for m in (128, 256, 512):
            xs, ws, wq = make_sets(m, n, k)
            sets = [(xs[i], ws[i % WEIGHT_COPIES], wq[i % WEIGHT_COPIES]) for i in range(SETS)]
            base = device_time(lambda x, w, q: jnp.dot(x, w.T, preferred_element_type=jnp.bfloat16), sets)
            print(f"M={m} N={n} K={k}: bf16 {base * 1e6:.1f} us", flush=True)
            ref = mx.mxfp8_matmul(xs[0], wq[0], out_dtype=jnp.float32, backend="emulation")
            cands = {"shipped (decode + cuBLAS)": lambda x, q: hopper.matmul(x, q, jnp.bfloat16)}
            for bm, bn, bk, nw, st in [(64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (128, 128, 64, 8, 3),
                                       (128, 64, 128, 4, 4), (128, 128, 128, 8, 3)]:  # fmt: skip
                cfg = hopper.KernelConfig(bm=bm, bn=bn, bk=bk, num_warps=nw, num_stages=st, tile_dequant=True)
                cands[str(cfg)] = lambda x, q, cfg=cfg: hopper.matmul_2d(
                    hopper.quantize_activations(x), q, jnp.bfloat16, cfg
                )
            for name, fn in cands.items():
                try:
                    err = rel(jax.jit(fn)(xs[0], wq[0]).astype(jnp.float32), ref)
                    t = device_time(lambda x, w, q, fn=fn: fn(x, q), sets)
                except Exception as e:  # report and go on: this is a sweep
                    print(f"  {name}: FAILED {repr(e)[:300]}", flush=True)
                    rows.append({"m": m, "n": n, "k": k, "name": name, "error": repr(e)[:400]})
                    continue
                print(f"  {t * 1e6:7.1f} us ({base / t:.2f}x) err {err:.1e}  {name}", flush=True)
                rows.append(dict(m=m, n=n, k=k, name=name, us=t * 1e6, bf16_us=base * 1e6, rel_err=err))
    return rows


if __name__ == "__main__":
    if "--small" in sys.argv:
        print(environment(), flush=True)
        small_retune()
    elif "--midm" in sys.argv:
        write_json("hopper_mid_m.json", {"env": environment(), "rows": mid_m_probe()})
    elif "--large" in sys.argv:
        write_json("hopper_large_m.json", {"rows": large_m_probe()})
    else:
        main()
