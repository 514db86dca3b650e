"""benchmarks/cuda_small_m_probe.py on CPU: the weight tiling, the activation operand, the launch's
jaxpr, and that every kernel a sweep asks for is instantiated (the kernels themselves run on the GPU)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cuda_kernel_names, needs_gpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cuda_small_m_probe as probe  # noqa: E402

from mxfp8_xla import MXArray, quantize  # noqa: E402
from mxfp8_xla.backends import ptx_launch  # noqa: E402


def test_tile_weight_puts_each_lanes_bytes_where_the_kernel_loads_them():
    n, k = 32, 256
    a = np.arange(n * k, dtype=np.int32).reshape(n, k)
    tiled = np.asarray(jax.jit(probe.tile_weight)(jnp.asarray(a))).reshape(-1)
    for r, p, half, lane, j in np.ndindex(n // 16, k // 64, 2, 32, 16):
        g, t = divmod(lane, 4)
        # the kernel: row tile r at r * 16 * k, 64-k tile p at p * 1024, rows g + 8 * half at 512 * half, lane * 16
        got = tiled[r * 16 * k + p * 1024 + half * 512 + lane * 16 + j]
        assert got == a[16 * r + 8 * half + g, 64 * p + 32 * (j // 8) + 8 * t + j % 8]


@pytest.mark.parametrize("m, rows", [(1, 8), (8, 8), (9, 16), (16, 16)])
def test_kernel_inputs_pad_rows_and_keep_values_exact(m, rows):
    x = jax.random.normal(jax.random.key(0), (m, 128), jnp.float32)
    xq = quantize(x)
    x16, scale = probe.kernel_inputs(xq, "cvt")
    assert x16.shape == (rows, 128) and x16.dtype == jnp.float16 and scale.shape == (rows, 4)
    np.testing.assert_array_equal(np.asarray(x16[:m], np.float32), np.asarray(xq.data, np.float32))
    assert not np.asarray(x16[m:]).any() and (np.asarray(scale[m:]) == 127).all()
    x8, _ = probe.kernel_inputs(xq, "cvt8")
    np.testing.assert_array_equal(np.asarray(x8[:m]), np.asarray(xq.data).view(np.uint8))


def test_bits_decode_gets_each_group_of_four_in_the_order_0_2_1_3():
    xq = quantize(jnp.arange(1, 33, dtype=jnp.float32)[None, :] / 8)
    plain, _ = probe.kernel_inputs(xq, "cvt")
    bits, _ = probe.kernel_inputs(xq, "bits")
    np.testing.assert_array_equal(np.asarray(bits[0, :8]), np.asarray(plain[0, [0, 2, 1, 3, 4, 6, 5, 7]]))


@pytest.mark.parametrize("decode, grid", [("tcvt", (16, 2)), ("tcvtr", (4, 2))])  # tcvtr: 4 warps' rows per CTA
def test_end_to_end_traces_to_one_launch_and_a_split_sum(decode, grid):
    x = jnp.ones((16, 1024), jnp.bfloat16)
    w = MXArray(jnp.ones((256, 1024), jnp.float8_e4m3fn), jnp.full((256, 32), 127, jnp.uint8))
    jaxpr = jax.make_jaxpr(lambda x, w: probe.end_to_end(x, w, (decode, 4, 4, 2)))(x, w).jaxpr
    launches = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert len(launches) == 1
    assert launches[0].params["grid"] == grid and launches[0].params["name"] == f"mxfp8_small_m_{decode}_nt2_kw4_u4"
    assert jaxpr.outvars[0].aval.shape == (16, 256) and jaxpr.outvars[0].aval.dtype == jnp.bfloat16


def test_fits_needs_whole_rounds_per_warp():
    assert probe.fits(4096, 4, 4, 8)  # 128 blocks = 8 splits x 4 warps x 4
    assert not probe.fits(4096, 8, 8, 4)
    assert probe.fits(4096, 8, 8, 2, "tcvtr")  # its warps do not split K: 2 splits x 8 blocks x 8 rounds


@needs_gpp
def test_every_kernel_a_sweep_can_ask_for_is_instantiated():
    names = cuda_kernel_names(probe.SOURCE, "mxfp8_small_m_")
    for sweep in probe.SWEEPS.values():
        wanted = {(d, w, u) for d, w, u, _ in sweep.fixed}
        configs = dict(sweep.decode_configs)
        wanted |= {(d, w, u) for d in sweep.searched for w, u in configs.get(d, sweep.configs)}
        # "then" decodes run at the best searched cell's warps/unroll (or 4/4 for a ceiling)
        searched_configs = {c for d in sweep.searched for c in configs.get(d, sweep.configs)}
        wanted |= {(d, w, u) for d in sweep.then for w, u in (((4, 4),) if sweep.ceiling else searched_configs)}
        wanted |= {(d, w, u) for d in sweep.e2e_decodes for w, u in sweep.e2e_configs}
        wanted |= {(d, 4, 4) for d in probe.EDGE_DECODES}
        wanted |= {(d, 4, 4) for d in ("tload", "tnone", "tcvt", "tcvtp", "tcvta4")}  # ncu_small_m.py's --decodes
        missing = [
            f"mxfp8_small_m_{d}_nt{nt}_kw{w}_u{u}"
            for d, w, u in wanted
            for nt in (1, 2)
            if f"mxfp8_small_m_{d}_nt{nt}_kw{w}_u{u}" not in names
        ]
        assert not missing
