"""Matmul backends: each computes ``x @ w.T`` for MXFP8 operands.

A backend is a function ``(x: MXArray [..., K], w: MXArray [N, K], out_dtype, *,
name=None) -> [..., N]``; those in ``TAKES_RAW_ACTIVATIONS`` also take a raw ``x``.
``name`` labels the layer in error and log messages.
``get_backend(name)`` returns it (after :func:`.select.select_backend` has resolved ``"auto"`` and checked the
name); unknown names raise ``ValueError``.

* ``"emulation"``: pure JAX, any device (:mod:`.emulation`).
* ``"torch"``: the same math in PyTorch through the DLPack bridge, a reference
  (:mod:`.torch_ref`).
* ``"flashinfer"``: FlashInfer ``mm_mxfp8`` on Blackwell through the bridge
  (:mod:`.flashinfer`).
* ``"hopper"``: SM90 kernels that never write a bf16 weight to HBM where it matters: one-launch CUDA
  GEMV kernels for one to eight raw rows (:mod:`.cuda_gemv`), Pallas kernels (Triton, Mosaic GPU) that
  decode the fp8 weight in registers up to 256 rows, exact bf16 operands into cuBLAS above (:mod:`.hopper`).
* ``"auto"``: picks per layer with :func:`.select.select_backend` (FlashInfer
  where it can serve, else the hopper kernel, else emulation; honours
  ``MXFP8_XLA_BACKEND``).

torch and flashinfer are imported only when their backend runs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mxfp8_xla.backends import emulation, flashinfer, hopper, torch_ref
from mxfp8_xla.backends.select import (
    BACKEND_ENV,
    BackendUnavailableError,
    Capability,
    backend_problems,
    override_capability,
    probe_capability,
    require_backend,
    select_backend,
)
from mxfp8_xla.mxarray import MXArray

Backend = Callable[..., jax.Array]


def _emulation(x: MXArray, w: MXArray, out_dtype: jnp.dtype, *, name: str | None = None) -> jax.Array:
    del name
    return emulation.matmul(x, w, out_dtype)


BACKENDS: dict[str, Backend] = {
    "emulation": _emulation,
    "torch": torch_ref.matmul,
    "flashinfer": flashinfer.matmul,
    "hopper": hopper.matmul,
}
"""The concrete backends; ``"auto"`` is resolved to one of them by :func:`select_backend` first."""


TAKES_RAW_ACTIVATIONS = frozenset({"hopper"})
"""Backends that quantize a raw activation in their own (faster, bit-identical) kernels; others get an MXArray."""


def get_backend(name: str) -> Backend:
    """The backend function registered under the concrete backend ``name`` (not ``"auto"``)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown MXFP8 backend {name!r}; available: {sorted(BACKENDS)}") from None


__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "TAKES_RAW_ACTIVATIONS",
    "Backend",
    "BackendUnavailableError",
    "Capability",
    "backend_problems",
    "get_backend",
    "override_capability",
    "probe_capability",
    "require_backend",
    "select_backend",
]
