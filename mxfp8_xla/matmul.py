"""``mxfp8_matmul``: the MXFP8 linear-layer product ``x @ w.T``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mxfp8_xla.backends import TAKES_RAW_ACTIVATIONS, get_backend, select_backend
from mxfp8_xla.mxarray import MXArray, check_quantizable, quantize


def mxfp8_matmul(
    x: jax.Array | MXArray,
    w: MXArray,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
    backend: str = "emulation",
    name: str | None = None,
) -> jax.Array:
    """Multiply ``x [..., K]`` by the MXFP8 weight ``w [N, K]`` (torch/ModelOpt orientation).

    ``x`` is a float32/bfloat16/float16 array, quantized here with blocks of 32
    along K, or an ``MXArray``. Returns ``[..., N]`` in ``out_dtype``.
    ``backend``: ``"emulation"``, ``"torch"``, ``"flashinfer"`` or ``"auto"``
    (see :mod:`mxfp8_xla.backends`); ``name`` labels the layer in backend errors.
    """
    if not isinstance(w, MXArray):
        raise TypeError(f"mxfp8_matmul: w must be an MXArray [N, K], got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"mxfp8_matmul: w must be 2-D [N, K], got shape {w.shape}")
    if not isinstance(x, MXArray):
        check_quantizable(x, "mxfp8_matmul: x")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"mxfp8_matmul: x has shape {tuple(x.shape)} but w has shape {w.shape}; "
            f"the last axis of x must equal K = {w.shape[1]}"
        )
    get_backend(backend)  # unknown names fail here, before any work
    # Resolve "auto" and check a forced backend now (trace time), before x is quantized
    # (here, or by a backend that quantizes in its own kernels).
    backend = select_backend(backend, n=w.shape[0], k=w.shape[1], out_dtype=out_dtype, name=name)
    run = get_backend(backend)
    if not isinstance(x, MXArray) and backend not in TAKES_RAW_ACTIVATIONS:
        x = quantize(x)
    return run(x, w, jnp.dtype(out_dtype), name=name)
