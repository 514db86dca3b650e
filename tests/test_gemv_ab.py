"""benchmarks/gemv_ab.py on CPU: its build arguments, and that the route it times traces with the build's PTX (the
timing itself needs the GPU)."""

import argparse
import functools
import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import H100

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gemv_ab  # noqa: E402
from mosaic_sweep import operands  # noqa: E402

from mxfp8_xla.backends import cuda_gemv, hopper, ptx_launch  # noqa: E402
from mxfp8_xla.backends.select import override_capability  # noqa: E402
from mxfp8_xla.mxarray import MXArray  # noqa: E402


def test_a_build_is_a_label_a_path_and_optionally_its_threads_an_sm():
    assert gemv_ab.parse_build("h1=ab_ptx/h1.ptx") == ("h1", Path("ab_ptx/h1.ptx"), None)
    assert gemv_ab.parse_build("r2=ab_ptx/r2.ptx@1024") == ("r2", Path("ab_ptx/r2.ptx"), 1024)


@pytest.mark.parametrize("spec", ["ab_ptx/h1.ptx", "=x.ptx", "h1=", "h1=x.ptx@", "h1=x.ptx@many"])
def test_a_build_without_a_label_or_a_path_is_refused(spec):
    with pytest.raises(argparse.ArgumentTypeError, match="expected LABEL=PATH"):
        gemv_ab.parse_build(spec)


def test_a_builds_threads_an_sm_set_its_grid_and_leave_the_librarys_alone(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, w = operands(14336, 4096, 2, copies=1)[0]
    ptx = cuda_gemv.PTX.read_text()
    with override_capability(H100):
        (packed,) = ptx_launch.traced_launch_params(gemv_ab.route_with(ptx, threads_per_sm=1024), x, w)
        (shipped,) = ptx_launch.traced_launch_params(gemv_ab.route_with(ptx), x, w)
    sms = cuda_gemv.DEFAULT_SMS
    assert packed["grid"] == (4 * sms, 1) and shipped["grid"] == (2 * sms, 1)  # 256 threads a CTA at K = 4096
    assert cuda_gemv.THREADS_PER_SM[2] == 512


def test_the_route_traces_with_the_builds_ptx_and_leaves_the_librarys_alone(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, w = operands(1024, 4096, 8, copies=1)[0]
    build = "// a variant build\n.visible .entry mxfp8_gemv_mma_r8_bf16(\n)\n"
    with override_capability(H100):
        ptx = [p["ptx"] for p in ptx_launch.traced_launch_params(gemv_ab.route_with(build), x, w)]
        library = [
            p["ptx"] for p in ptx_launch.traced_launch_params(gemv_ab.route_with(cuda_gemv.PTX.read_text()), x, w)
        ]
    assert len(ptx) == 1 and ptx[0].startswith("// a variant build") and "mxfp8_gemv_mma_r8_bf16(" in ptx[0]
    assert len(library) == 1 and library[0] != ptx[0] and cuda_gemv._ptx() == cuda_gemv.PTX.read_text()


def test_repacked_units_put_each_lanes_bytes_where_the_repacked_kernel_loads_them():
    """variants/mma_repacked.json: lane (g, t) of warp q loads 16 bytes at unit * 8 K + 1024 q + 512 p + 64 g + 16 t
    (p = 0, 1) and 4 scale bytes at unit * 8 K / 32 + 32 q + 4 g; the stored kernel reads the same bytes at row
    unit * 8 + g, columns 128 q + 64 p + 16 t and scale bytes 4 q .. 4 q + 3."""
    n, k = 16, 512
    kd, ks = jax.random.split(jax.random.key(0))  # random bytes: a misplaced 16 or 4 bytes would differ
    data = jax.lax.bitcast_convert_type(jax.random.bits(kd, (n, k), jnp.uint8), jnp.float8_e4m3fn)
    w = MXArray(data, jax.random.bits(ks, (n, k // 32), jnp.uint8))
    packed = gemv_ab.repack_units(w)
    as_bytes = functools.partial(jax.lax.bitcast_convert_type, new_dtype=jnp.uint8)
    flat, scales = np.asarray(as_bytes(packed.data)).reshape(-1), np.asarray(packed.scale).reshape(-1)
    stored, stored_scales = np.asarray(as_bytes(w.data)), np.asarray(w.scale)
    for unit, q, g, t, p in itertools.product(range(n // 8), range(k // 128), range(8), range(4), range(2)):
        at = unit * 8 * k + 1024 * q + 512 * p + 64 * g + 16 * t
        col = 128 * q + 64 * p + 16 * t
        np.testing.assert_array_equal(flat[at : at + 16], stored[unit * 8 + g, col : col + 16])
        s_at = unit * 8 * (k // 32) + 32 * q + 4 * g
        np.testing.assert_array_equal(scales[s_at : s_at + 4], stored_scales[unit * 8 + g, 4 * q : 4 * q + 4])
