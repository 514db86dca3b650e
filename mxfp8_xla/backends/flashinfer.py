"""``"flashinfer"`` backend: FlashInfer's ``mm_mxfp8`` (Blackwell, SM100+) through the bridge.

Everything FlashInfer's kernel reads is prepared in JAX:

* the activation ``x [M, K]`` is quantized in JAX (``mxfp8_xla.quantize``), and
  its scales ``[M, K/32]`` are swizzled in JAX into FlashInfer's 1-D 128x4
  layout (:func:`mxfp8_xla.swizzle_scales`);
* the weight ``w [N, K]`` keeps its row-major ``[N, K]`` float8_e4m3fn data. Its scales are swizzled inside
  each traced call when ``w`` is an ``MXArray`` (the Flax layers' case: a permutation of ``N * K / 32`` bytes a
  call), or once, ahead of the calls, with :func:`prepare_weight`, whose :class:`FlashInferWeight`
  ``mxfp8_matmul`` takes as its ``w``.

Then, on XLA's stream::

    flashinfer.mm_mxfp8(a_q, w_q.t(), a_scale_sw, w_scale_sw,
                        out=out, out_dtype=out.dtype, use_8x4_sf_layout=False,
                        backend="cutlass")

with ``b = w_q.t()`` the column-major ``[K, N]`` view of the ``[N, K]`` weight,
``out`` XLA's own ``[M, N]`` output buffer (no allocation, no copy), and
both scale tensors 1-D uint8 of length ``round_up(rows, 128) * round_up(K/32, 4)``.
:func:`flashinfer_arguments` builds and validates exactly these arguments; it
is a pure function of torch tensors so CPU tests can check it.

FlashInfer's own ``mxfp8_quantize`` is never called (below SM100 it silently
returns garbage; here quantization is JAX's, bit-exact on every device).

Warm-up: ``mm_mxfp8`` JIT-loads its CUTLASS module, allocates a workspace on
first use and consults its autotuner; none of that may happen during CUDA-graph
capture. Call :func:`warmup` for the layer shapes before the first jitted call
when command buffers are on (the default on GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

from mxfp8_xla.backends.select import FLASHINFER_MIN_K, FLASHINFER_MIN_N
from mxfp8_xla.interop import rowwise_vmap, torch_callback
from mxfp8_xla.layout import swizzle_scales, swizzled_scale_len, unswizzle_scales
from mxfp8_xla.mxarray import MXArray
from mxfp8_xla.numerics import BLOCK_SIZE

MM_BACKEND = "cutlass"
"""FlashInfer ``mm_mxfp8`` backend: CUTLASS reads 1-D 128x4 swizzled scales."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlashInferWeight:
    """An MXFP8 weight ready for ``mm_mxfp8``: data ``[N, K]`` fp8, scales swizzled 1-D uint8.

    ``mxfp8_matmul`` takes it as ``w`` on every backend: the ``flashinfer`` backend reads it as it is, the others
    get :meth:`to_mxarray` (the swizzle undone inside the traced call).
    """

    data: jax.Array
    scale_swizzled: jax.Array

    @property
    def shape(self) -> tuple[int, int]:
        """``[N, K]``, the shape of ``data``."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def ndim(self) -> int:
        """2."""
        return self.data.ndim

    def to_mxarray(self) -> MXArray:
        """The same weight with its scales back in the ``[N, K/32]`` layout."""
        n, k = self.shape
        return MXArray(self.data, unswizzle_scales(self.scale_swizzled, n, k // BLOCK_SIZE))


_swizzle_jit = jax.jit(swizzle_scales)


def prepare_weight(w: MXArray) -> FlashInferWeight:
    """Swizzle the scales of ``w [N, K]`` once, ahead of the calls that use it; the data is kept as is.

    For the ``flashinfer`` backend: every other backend undoes the swizzle inside each call (and logs it)."""
    if not isinstance(w, MXArray) or w.ndim != 2:
        raise ValueError(f"prepare_weight expects a 2-D MXArray [N, K], got {getattr(w, 'shape', w)}")
    return FlashInferWeight(data=w.data, scale_swizzled=_swizzle_jit(w.scale))


def flashinfer_arguments(
    a_q: Any, w_q: Any, a_scale_sw: Any, w_scale_sw: Any, out: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for ``flashinfer.mm_mxfp8(*args, **kwargs)``, validated.

    Inputs are torch tensors: ``a_q [M, K]`` and ``w_q [N, K]`` row-major
    float8_e4m3fn, ``a_scale_sw``/``w_scale_sw`` 1-D uint8 in the 128x4 swizzled
    layout, ``out [M, N]`` bfloat16/float16 row-major. Raises ``ValueError``
    for anything ``mm_mxfp8`` (common check + CUTLASS requirement + the strides
    its kernels assume) would reject or misread.
    """
    import torch

    def fail(msg: str) -> None:
        raise ValueError(f"flashinfer_arguments: {msg}")

    if a_q.ndim != 2 or w_q.ndim != 2:
        fail(f"a_q and w_q must be 2-D, got {tuple(a_q.shape)} and {tuple(w_q.shape)}")
    m, k = a_q.shape
    n, kw = w_q.shape
    if kw != k:
        fail(f"K mismatch: a_q {tuple(a_q.shape)} vs w_q {tuple(w_q.shape)}")
    if k % BLOCK_SIZE:
        fail(f"K={k} must be a multiple of {BLOCK_SIZE}")
    if n < FLASHINFER_MIN_N or k < FLASHINFER_MIN_K:
        fail(f"mm_mxfp8 requires n >= {FLASHINFER_MIN_N} and k >= {FLASHINFER_MIN_K}, got m={m}, n={n}, k={k}")
    for label, t in (("a_q", a_q), ("w_q", w_q)):
        if t.dtype != torch.float8_e4m3fn:
            fail(f"{label} must be float8_e4m3fn, got {t.dtype}")
    for label, t, rows in (("a_scale_sw", a_scale_sw, m), ("w_scale_sw", w_scale_sw, n)):
        if t.dtype != torch.uint8:
            fail(f"{label} must be uint8 (E8M0), got {t.dtype}")
        if t.ndim != 1:
            fail(f"{label} must be the 1-D 128x4 swizzled layout, got shape {tuple(t.shape)}")
        want = swizzled_scale_len(rows, k // BLOCK_SIZE)
        if t.shape[0] != want:
            fail(f"{label} has length {t.shape[0]}; rows={rows}, K={k} need {want}")
        if not t.is_contiguous():
            fail(f"{label} must be contiguous")
    if tuple(a_q.stride()) != (k, 1):
        fail(f"a_q must be row-major contiguous [M, K], got strides {tuple(a_q.stride())}")
    if tuple(w_q.stride()) != (k, 1):
        fail(f"w_q must be row-major contiguous [N, K], got strides {tuple(w_q.stride())}")
    if out.dtype not in (torch.bfloat16, torch.float16):
        fail(f"out must be bfloat16 or float16, got {out.dtype}")
    if tuple(out.shape) != (m, n) or not out.is_contiguous():
        fail(f"out must be a contiguous [{m}, {n}] tensor, got {tuple(out.shape)} with strides {tuple(out.stride())}")
    devices = {t.device for t in (a_q, w_q, a_scale_sw, w_scale_sw, out)}
    if len(devices) != 1:
        fail(f"all tensors must be on one device, got {sorted(map(str, devices))}")

    b = w_q.t()  # [K, N], column-major: stride (1, K)
    args = (a_q, b, a_scale_sw, w_scale_sw)
    kwargs = {"out": out, "out_dtype": out.dtype, "use_8x4_sf_layout": False, "backend": MM_BACKEND}
    return args, kwargs


def _ffi_stream(device: Any) -> Any:
    """Pin TVM-FFI's stream to torch's current stream (XLA's, inside the bridge).

    FlashInfer's TVM-FFI kernels launch on ``TVMFFIEnvGetStream``; tvm-ffi only
    follows torch's current stream automatically when torch exposes its DLPack
    exchange API, so set it explicitly.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    try:
        import tvm_ffi

        return tvm_ffi.use_torch_stream()
    except (ImportError, AttributeError):  # older FlashInfer (torch extensions) use torch's stream
        return contextlib.nullcontext()


def _mm_mxfp8(a_q: Any, a_scale_sw: Any, w_q: Any, w_scale_sw: Any, *, out: Any) -> None:
    import flashinfer

    args, kwargs = flashinfer_arguments(a_q, w_q, a_scale_sw, w_scale_sw, out)
    with _ffi_stream(out.device):
        flashinfer.mm_mxfp8(*args, **kwargs)


def _matmul_2d(
    x_data: jax.Array,
    x_scale: jax.Array,
    w_data: jax.Array,
    w_scale_sw: jax.Array,
    *,
    out_dtype: jnp.dtype,
    label: str,
) -> jax.Array:
    m, _ = x_data.shape
    n = w_data.shape[0]
    return torch_callback(
        _mm_mxfp8,
        jax.ShapeDtypeStruct((m, n), out_dtype),
        x_data,
        swizzle_scales(x_scale),
        w_data,
        w_scale_sw,
        pass_out=True,
        vmap_method="sequential",  # batching is handled one level up (rowwise_vmap)
        name=label,
    )


def matmul(
    x: MXArray,
    w: MXArray | FlashInferWeight,
    out_dtype: jnp.dtype,
    *,
    name: str | None = None,
) -> jax.Array:
    """``x [..., K] @ w [N, K].T`` with FlashInfer ``mm_mxfp8``; ``w`` may be pre-swizzled.

    Raises :class:`~mxfp8_xla.backends.select.BackendUnavailableError` at trace
    time when this device, FlashInfer or the shape cannot serve it.
    """
    from mxfp8_xla.backends.select import require_backend

    n, k = w.shape
    require_backend("flashinfer", n=n, k=k, out_dtype=out_dtype, name=name)
    wp = w if isinstance(w, FlashInferWeight) else prepare_weight(w)
    *lead, _ = x.shape
    x_data = x.data.reshape(-1, k)
    x_scale = x.scale.reshape(-1, k // BLOCK_SIZE)
    if x_data.shape[0] == 0:
        return jnp.zeros((*lead, n), out_dtype)
    label = f"flashinfer:{name or 'mxfp8_matmul'}"

    def two_d(xd, xs, wd, ws):
        return _matmul_2d(
            xd,
            xs,
            wd,
            ws,
            out_dtype=jnp.dtype(out_dtype),
            label=label,
        )

    # vmap: flatten mapped axes into the rows of x *before* its scales are swizzled.
    out = rowwise_vmap(two_d, (0, 1))(x_data, x_scale, wp.data, wp.scale_swizzled)
    return out.reshape(*lead, n)


def warmup(
    shapes: Iterable[tuple[int, int, int]],
    out_dtype: Any = jnp.bfloat16,
    *,
    device: Any = None,
    tune: bool = False,
) -> None:
    """Run ``mm_mxfp8`` once per ``(m, n, k)`` outside any CUDA-graph capture.

    Loads the CUTLASS module, allocates FlashInfer's cached workspace and, with
    ``tune=True``, autotunes inside ``flashinfer.autotune()``. Call it when the
    layers are set up, before the first jitted call with command buffers.
    """
    import flashinfer
    import torch

    from mxfp8_xla.interop import torch_dtype

    device = torch.device(device or "cuda")
    tdt = torch_dtype(jnp.dtype(out_dtype))
    ctx = flashinfer.autotune(True) if tune else contextlib.nullcontext()
    with ctx:
        for m, n, k in shapes:
            a = torch.zeros((m, k), dtype=torch.uint8, device=device).view(torch.float8_e4m3fn)
            w = torch.zeros((n, k), dtype=torch.uint8, device=device).view(torch.float8_e4m3fn)
            sa = torch.full((swizzled_scale_len(m, k // BLOCK_SIZE),), 127, dtype=torch.uint8, device=device)
            sw = torch.full((swizzled_scale_len(n, k // BLOCK_SIZE),), 127, dtype=torch.uint8, device=device)
            out = torch.empty((m, n), dtype=tdt, device=device)
            args, kwargs = flashinfer_arguments(a, w, sa, sw, out)
            with _ffi_stream(out.device):
                flashinfer.mm_mxfp8(*args, **kwargs)
    torch.cuda.synchronize(device)
