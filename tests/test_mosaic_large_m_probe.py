"""benchmarks/mosaic_large_m_probe.py on CPU: its bf16-multiply decode is exact, its configs check their
shapes, and every config it timed lowers for an SM90 GPU (the kernel itself runs only there)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mosaic_large_m_probe as probe  # noqa: E402

from mxfp8_xla import numerics  # noqa: E402
from mxfp8_xla.backends import hopper_mosaic  # noqa: E402

ALL_E4M3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)


@pytest.mark.parametrize("jit", [False, True])
def test_bf16_multiply_decodes_every_code_as_the_float32_multiply(jit):
    # Bytes >= 10 keep every float32 product normal (XLA:CPU flushes float32 subnormals); 255 is NaN.
    scales = np.r_[np.arange(10, 255), 255].astype(np.uint8)
    codes = jnp.asarray(np.tile(ALL_E4M3.reshape(8, 32), (len(scales), 1)))
    factor = numerics.scale_to_factor(jnp.asarray(np.repeat(scales, 8)))
    decode = jax.jit(probe.decode_bf16_multiply) if jit else probe.decode_bf16_multiply
    got = np.asarray(decode(codes, factor), np.float32)
    want = np.asarray(hopper_mosaic.decode_with_factor(codes, factor), np.float32)
    np.testing.assert_array_equal(got, want)  # NaN in the same places, every finite value equal
    assert np.isnan(got[-8:]).all()


def test_config_says_why_it_cannot_run():
    assert probe.LargeConfig(stages=3).check(2048, 4096, 4096) == "3 stages of 81920 bytes exceed shared memory"
    assert probe.LargeConfig().check(2000, 4096, 4096) == "(2000, 4096, 4096) does not tile by (256, 128, 128)"
    assert probe.LargeConfig(tile_k=64, stages=5, persistent=True).check(2048, 14336, 4096) is None


def test_labels_name_what_differs_from_the_first_kernel():
    assert probe.FIRST.label() == "large T=256 tk=128 st=2 lag=0"
    cfg = probe.LargeConfig(tile_k=64, stages=5, persistent=True, weight="bf16mul", scales="smem", snake=4)
    assert cfg.label() == "large T=256 tk=64 st=5 lag=0 weight=bf16mul persistent snake=4 scales=smem"


@pytest.mark.parametrize(
    "cfg",
    sorted({c for cs in probe.CONFIG_SETS.values() for c in cs} | {*probe.PROFILED, *probe.LAG_CHECKED}, key=repr),
    ids=repr,
)
def test_every_config_lowers_for_an_sm90_gpu(cfg):
    m, n, k = 768, 256, 512  # 768 rows tile by 128, 192 and 256
    w_dtype = jnp.bfloat16 if cfg.weight == "bf16" else jnp.float8_e4m3fn

    def run(x, data, scale):
        return probe.large_m_matmul(x, data, scale, jnp.bfloat16, cfg, num_sms=4)

    args = (
        jax.ShapeDtypeStruct((m, k), jnp.bfloat16),
        jax.ShapeDtypeStruct((n, k), w_dtype),
        jax.ShapeDtypeStruct((n, k // 32), jnp.uint8),
    )
    assert "mosaic_gpu" in jax.jit(run).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_the_kernel_refuses_a_shape_it_cannot_tile():
    x = jnp.zeros((100, 512), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"cannot run x \[100, 512\] @ w \[256, 512\]\.T: .* does not tile"):
        probe.large_m_matmul(
            x, jnp.zeros((256, 512), jnp.float8_e4m3fn), jnp.zeros((256, 16), jnp.uint8), jnp.bfloat16, probe.FIRST
        )
