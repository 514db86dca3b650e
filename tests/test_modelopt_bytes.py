"""``mxfp8_xla.quantize`` reproduces every weight and scale byte of a real ModelOpt 0.47 export.

The fixture's ``unquantized_bf16.safetensors`` holds the bf16 weights ModelOpt quantized
into ``model.safetensors``. Files are read here with safetensors' own torch reader, so the
check does not depend on this package's loader.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURE_DIR

import mxfp8_xla as mx

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.skipif(not FIXTURE_DIR.is_dir(), reason=f"fixture directory {FIXTURE_DIR} is absent")


def _bytes(t) -> np.ndarray:
    """The raw bytes of a torch tensor as a uint8 numpy array of the same shape (+ itemsize)."""
    return t.contiguous().view(torch.uint8).numpy()


def _load():
    quantized = safetensors_torch.load_file(str(FIXTURE_DIR / "model.safetensors"))
    unquantized = safetensors_torch.load_file(str(FIXTURE_DIR / "unquantized_bf16.safetensors"))
    return quantized, unquantized


def test_quantize_reproduces_modelopt_weight_and_scale_bytes():
    quantized, unquantized = _load()
    names = sorted(n[: -len("_scale")] for n in quantized if n.endswith(".weight_scale"))
    assert len(names) == 14  # 7 projections x 2 layers
    for name in names:
        w_file, s_file = quantized[name], quantized[name + "_scale"]
        assert w_file.dtype == torch.float8_e4m3fn and s_file.dtype == torch.uint8
        bf16 = _bytes(unquantized[name]).view(ml_dtypes.bfloat16).reshape(unquantized[name].shape)
        assert bf16.shape == tuple(w_file.shape)  # [N, K], torch orientation
        q = mx.quantize(jnp.asarray(bf16))  # blocks of 32 along K (last axis)
        np.testing.assert_array_equal(np.asarray(q.data).view(np.uint8), _bytes(w_file), err_msg=name)
        np.testing.assert_array_equal(np.asarray(q.scale), _bytes(s_file), err_msg=name + "_scale")


def test_unquantized_tensors_are_stored_unchanged():
    quantized, unquantized = _load()
    plain = [n for n in quantized if quantized[n].dtype == torch.bfloat16]
    assert sorted(plain) == sorted(
        n for n in unquantized if n.endswith("norm.weight") or "embed" in n or "lm_head" in n
    )
    for name in plain:
        np.testing.assert_array_equal(_bytes(quantized[name]), _bytes(unquantized[name]), err_msg=name)
