"""benchmarks/gemv_norm_probe.py on CPU: the fused call, the norm it is compared with and the identity weight that
reads the kernel's activation back (the kernel runs on the GPU)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gemv_norm_probe as probe  # noqa: E402
import mosaic_sweep  # noqa: E402

from mxfp8_xla import MXArray, dequantize, quantize  # noqa: E402
from mxfp8_xla.backends import emulation, ptx_launch  # noqa: E402


def weight(n: int, k: int) -> MXArray:
    return MXArray(jnp.ones((n, k), jnp.float8_e4m3fn), jnp.full((n, k // 32), 127, jnp.uint8))


@pytest.mark.parametrize("out_dtype, suffix", [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")])
@pytest.mark.parametrize(
    "combo, name",
    [
        ("bf16/bf16", "addnorm"),
        ("f32/f32", "addnorm_xf32"),
        ("bf16/f32", "addnorm_nf32"),
        ("f32/bf16", "addnorm_xf32_nbf16"),
    ],
)
def test_the_fused_call_is_the_librarys_add_and_norm_launch_for_each_pair(out_dtype, suffix, combo, name):
    assert combo in probe.COMBOS
    x_dtype, norm_dtype = probe.combo_dtypes(combo)
    x = jnp.ones((1, 4096), x_dtype)
    delta, norm_weight = probe.norm_operands(4096, 0, x_dtype, norm_dtype)
    assert (delta.dtype, norm_weight.dtype) == (x_dtype, norm_dtype)
    fn = lambda *a: probe.add_norm_gemv(*a, out_dtype=out_dtype)  # noqa: E731
    assert ptx_launch.traced_launches(fn, x, delta, norm_weight, weight(6144, 4096)) == [
        f"mxfp8_gemv_split_c1_r4_{name}_{suffix}"
    ]
    # the unfused variant: XLA's add and norm, then the GEMV of the normalized row's dtype
    gemv = "mxfp8_gemv_split_c1_r4_xf32_bf16" if jnp.float32 in (x_dtype, norm_dtype) else "mxfp8_gemv_split_c1_r4_bf16"
    assert ptx_launch.traced_launches(probe.unfused, x, delta, norm_weight, weight(6144, 4096)) == [gemv]


def test_a_float32_pairs_operands_have_full_float32_mantissas():
    delta, _ = probe.norm_operands(4096, 0, jnp.float32, jnp.float32)
    d = np.asarray(delta)
    assert np.mean(d != d.astype(jnp.bfloat16).astype(np.float32)) > 0.9


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
    got = emulation.matmul(quantize(v), mosaic_sweep.identity_weight(512), jnp.float32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(dequantize(quantize(v), jnp.float32)))
