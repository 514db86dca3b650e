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

from mxfp8_xla.backends.registry import (
    BACKENDS,
    FUSED_ADD_NORM,
    TAKES_RAW_ACTIVATIONS,
    TRAIN_QUANTIZERS,
    Backend,
    get_backend,
)
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

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "FUSED_ADD_NORM",
    "TAKES_RAW_ACTIVATIONS",
    "TRAIN_QUANTIZERS",
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
