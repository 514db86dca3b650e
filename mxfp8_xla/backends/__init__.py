"""Matmul backends: each computes ``x @ w.T`` for MXFP8 operands.

A backend is a function ``(x: MXArray [..., K], w: MXArray [N, K], out_dtype) ->
[..., N]``. ``get_backend(name)`` returns it; unknown names raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mxfp8_xla.backends import emulation
from mxfp8_xla.mxarray import MXArray

Backend = Callable[[MXArray, MXArray, jnp.dtype], jax.Array]

BACKENDS: dict[str, Backend] = {
    "emulation": emulation.matmul,
}


def get_backend(name: str) -> Backend:
    """The backend function registered under ``name``."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown MXFP8 backend {name!r}; available: {sorted(BACKENDS)}") from None
