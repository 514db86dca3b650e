"""benchmarks/gemv_norm_probe.py on CPU: the fused launch's jaxpr, its refusals, the kernels it names, and the norm it
is compared with (the kernel runs on the GPU)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cuda_kernel_names, needs_gpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gemv_norm_probe as probe  # noqa: E402

from mxfp8_xla import MXArray, dequantize, quantize  # noqa: E402
from mxfp8_xla.backends import cuda_gemv, emulation, ptx_launch  # noqa: E402


def weight(n: int, k: int) -> MXArray:
    return MXArray(jnp.ones((n, k), jnp.float8_e4m3fn), jnp.full((n, k // 32), 127, jnp.uint8))


@pytest.mark.parametrize("out_dtype, suffix", [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")])
def test_one_launch_with_the_product_and_the_residual(out_dtype, suffix):
    x = jnp.ones((1, 4096), jnp.bfloat16)
    delta, norm_weight = probe.norm_operands(4096, 0)
    fn = lambda *a: probe.add_norm_gemv(*a, out_dtype=out_dtype)  # noqa: E731
    jaxpr = jax.make_jaxpr(fn)(x, delta, norm_weight, weight(6144, 4096)).jaxpr
    (launch,) = [e for e in jaxpr.eqns if e.primitive is ptx_launch._launch]
    assert launch.params["name"] == f"mxfp8_gemv_addnorm_{suffix}"
    assert launch.params["grid"] == (cuda_gemv.config(6144, 4096).grid(6144, probe.SMS), 1)
    assert launch.params["warps"] == 4096 // 16 // 32 and len(launch.invars) == 7
    assert launch.params["outputs"] == (((1, 6144), jnp.dtype(out_dtype)), ((1, 4096), jnp.dtype(jnp.bfloat16)))
    y, h = jaxpr.outvars
    assert (y.aval.shape, y.aval.dtype, h.aval.shape, h.aval.dtype) == ((1, 6144), out_dtype, (1, 4096), jnp.bfloat16)


@pytest.mark.parametrize(
    "x, k", [(jnp.ones((2, 4096), jnp.bfloat16), 4096), (jnp.ones((1, 4096), jnp.float32), 4096), (None, 4000)]
)
def test_refuses_what_the_kernel_does_not_take(x, k):
    x = jnp.ones((1, k), jnp.bfloat16) if x is None else x
    delta, norm_weight = jnp.zeros((1, k), jnp.bfloat16), jnp.ones((k,), jnp.bfloat16)
    with pytest.raises(ValueError, match="add_norm_gemv"):
        probe.add_norm_gemv(x, delta, norm_weight, weight(64, k))


@needs_gpp
def test_the_source_defines_the_kernels_it_launches():
    names = cuda_kernel_names(probe.SOURCE, "mxfp8_gemv_addnorm_")
    assert names == {"mxfp8_gemv_addnorm_bf16", "mxfp8_gemv_addnorm_f32"}


def test_rms_norm_is_the_models_formula():
    h = jax.random.normal(jax.random.key(0), (1, 4096), jnp.float32).astype(jnp.bfloat16)
    _, g = probe.norm_operands(4096, 0)
    h32 = np.asarray(h, np.float32)
    r = 1 / np.sqrt(np.mean(h32 * h32) + probe.EPS)
    y = np.asarray(g, np.float32) * np.asarray(jnp.asarray(h32 * r).astype(jnp.bfloat16), np.float32)
    want = np.asarray(jnp.asarray(y).astype(jnp.bfloat16), np.float32)
    got = np.asarray(jax.jit(probe.rms_norm)(h, g), np.float32)
    np.testing.assert_allclose(got, want, rtol=2**-7)  # rsqrt's last bit may move a bf16 rounding by one step


def test_identity_weight_returns_the_decoded_activation():
    v = jax.random.normal(jax.random.key(1), (1, 512), jnp.float32).astype(jnp.bfloat16)
    got = emulation.matmul(quantize(v), probe.identity_weight(512), jnp.float32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(dequantize(quantize(v), jnp.float32)))
