"""MXFP8 (OCP microscaling, E4M3 elements, E8M0 scales per 32) linear algebra for JAX."""

from mxfp8_xla.backends import BackendUnavailableError, select_backend
from mxfp8_xla.compile_options import DECODE_LOOP_COMPILER_OPTIONS
from mxfp8_xla.info import info
from mxfp8_xla.layout import swizzle_scales, swizzled_scale_len, unswizzle_scales
from mxfp8_xla.matmul import add_rms_norm_matmul, mxfp8_matmul
from mxfp8_xla.mxarray import MXArray, dequantize, quantize
from mxfp8_xla.numerics import BLOCK_SIZE, E4M3_MAX

__version__ = "0.1.0"

__all__ = [
    "BLOCK_SIZE",
    "BackendUnavailableError",
    "DECODE_LOOP_COMPILER_OPTIONS",
    "E4M3_MAX",
    "MXArray",
    "add_rms_norm_matmul",
    "dequantize",
    "info",
    "mxfp8_matmul",
    "quantize",
    "select_backend",
    "swizzle_scales",
    "swizzled_scale_len",
    "unswizzle_scales",
]
