"""The backend registry: each backend's entry point under its name, and what each takes."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mxfp8_xla.backends import emulation, flashinfer, hopper, torch_ref
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
"""The concrete backends; ``"auto"`` is resolved to one of them by :func:`.select.select_backend` first."""


TAKES_RAW_ACTIVATIONS = frozenset({"hopper"})
"""Backends that quantize a raw activation in their own (faster, bit-identical) kernels; others get an MXArray."""

TRAIN_QUANTIZERS: dict[str, tuple[Callable[[jax.Array], MXArray], Callable[[jax.Array], MXArray]]] = {
    "hopper": (hopper.quantize_rows, hopper.quantize_kernel),
}
"""Backends with their own (faster, bit-identical) kernels for train mode's quantization every step:
``(quantize(x [..., K]), quantize(kernel [K, N], axis=0) -> [N, K])``. Other backends' train mode uses ``quantize``'s
jnp, which XLA:GPU ran at 8-23% of copy bandwidth for the kernel (H200; docs/benchmark_log.md)."""

FUSED_ADD_NORM: dict[str, tuple[Callable[..., bool], Callable[..., tuple[jax.Array, jax.Array]]]] = {
    "hopper": (hopper.fuses_add_norm, hopper.add_norm_gemv),
}
"""Backends with one kernel for a residual add, an RMSNorm and the product: ``(fuses(x, delta, norm_weight, w),
run(x, delta, norm_weight, eps, w, out_dtype))``; where ``fuses`` says no, ``add_rms_norm_matmul`` composes them."""


def get_backend(name: str) -> Backend:
    """The backend function registered under the concrete backend ``name`` (not ``"auto"``)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown MXFP8 backend {name!r}; available: {sorted(BACKENDS)}") from None
