"""Flax layers with MXFP8 weights and activations: Linen ``MXFP8Dense``, NNX ``MXFP8Linear``."""

from mxfp8_xla.flax.convert import (
    ConversionReport,
    ConvertedLayer,
    SkippedLayer,
    quantize_module,
    quantize_params,
    swizzle_params,
)
from mxfp8_xla.flax.linen import MXFP8Dense
from mxfp8_xla.flax.nnx import MXFP8Linear

__all__ = [
    "ConversionReport",
    "ConvertedLayer",
    "MXFP8Dense",
    "MXFP8Linear",
    "SkippedLayer",
    "quantize_module",
    "quantize_params",
    "swizzle_params",
]
