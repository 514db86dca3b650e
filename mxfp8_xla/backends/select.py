"""Backend selection: which MXFP8 matmul backend can serve a layer here, and why not.

Rules (checked when a layer is set up or first traced, never inside a kernel):

* ``"emulation"``: always available (pure JAX, any device).
* ``"torch"``: PyTorch reference through the DLPack bridge. Needs torch; on GPU a
  CUDA build of torch. Never picked by ``"auto"``.
* ``"flashinfer"``: FlashInfer ``mm_mxfp8`` through the bridge. Needs a CUDA GPU
  of compute capability 10.0 or newer (Blackwell), torch with CUDA, an importable
  ``flashinfer``, ``K % 32 == 0``, ``K >= 128``, ``N >= 128`` and a bfloat16 or
  float16 output (on SM12x also ``N % 32 == 0``).
* ``"hopper"``: the kernels of :mod:`.hopper` (fp8 weight decoded in registers).
  Needs an NVIDIA SM90 GPU (H100/H200: the only chips it was built and measured
  on), ``K % 32 == 0`` (any N) and the JAX modules its kernels are
  built on: Pallas Triton (deprecated in jax 0.11), Mosaic GPU and the private
  modules behind jaxlib's PTX launcher (where one is gone, the package still
  imports and this backend reports itself unavailable).
* ``"auto"``: ``"flashinfer"`` when it can serve, else ``"hopper"`` when it can,
  else ``"emulation"``, with one log line per layer (logger
  ``mxfp8_xla.backends``) saying why: a warning when it falls back to
  emulation on a GPU, info otherwise.

A backend named explicitly (argument other than ``"auto"``/``None``) is
*forced*; so is ``MXFP8_XLA_BACKEND=<name>`` when the argument is ``"auto"`` or
``None``. A forced backend that cannot serve raises
:class:`BackendUnavailableError` naming the layer, the shape and the reason;
there is no silent fallback.

The device/library probe is cached; tests replace it with
:func:`override_capability`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from mxfp8_xla.numerics import BLOCK_SIZE

__all__ = [
    "BACKEND_ENV",
    "BackendUnavailableError",
    "Capability",
    "backend_problems",
    "override_capability",
    "probe_capability",
    "require_backend",
    "select_backend",
]

logger = logging.getLogger("mxfp8_xla.backends")

BACKEND_ENV = "MXFP8_XLA_BACKEND"
SELECTABLE = ("auto", "emulation", "torch", "flashinfer", "hopper")
FLASHINFER_MIN_K = 128
FLASHINFER_MIN_N = 128
FLASHINFER_OUT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot serve this layer here (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Capability:
    """What this process can run. ``flashinfer_*`` is ``None``/``None`` until probed."""

    platform: str
    """JAX default backend platform: ``"cpu"``, ``"gpu"``, ``"tpu"``..."""
    device_kind: str
    compute_capability: tuple[int, int] | None = None
    """CUDA compute capability of the first device, ``None`` off NVIDIA GPUs."""
    gpu_vendor: str | None = None
    """``"cuda"`` or ``"rocm"`` on GPUs."""
    torch_version: str | None = None
    torch_error: str | None = None
    torch_cuda: bool = False
    """torch was built with CUDA and sees a GPU."""
    flashinfer_version: str | None = None
    flashinfer_error: str | None = None
    """Why ``import flashinfer`` failed. For torch and flashinfer, version and error
    both ``None`` means "not probed yet"."""
    hopper_import_error: str | None = None
    """Which JAX module the hopper backend's kernels need does not import, and why (:func:`_probe_hopper_imports`);
    ``None``: they all do."""

    @property
    def sm(self) -> int | None:
        """Compute capability as ``major * 10 + minor`` (90 for H100, 100 for B200)."""
        if self.compute_capability is None:
            return None
        return self.compute_capability[0] * 10 + self.compute_capability[1]

    def describe(self) -> str:
        """The platform, with the device kind and SM where they say more, for messages."""
        cc = f", SM{self.sm}" if self.sm is not None else ""
        if self.device_kind.lower() == self.platform and not cc:
            return self.platform
        return f"{self.platform} ({self.device_kind}{cc})"


def _parse_cc(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        major, _, minor = str(value).partition(".")
        return int(major), int(minor or 0)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def _probe_devices() -> Capability:
    device = jax.devices()[0]
    platform = device.platform
    kind = getattr(device, "device_kind", platform)
    vendor = None
    cc = None
    if platform in ("gpu", "cuda", "rocm"):
        client_platform = getattr(getattr(device, "client", None), "platform_version", "") or ""
        vendor = "rocm" if "rocm" in client_platform.lower() else "cuda"
        platform = "gpu"
        cc = _parse_cc(getattr(device, "compute_capability", None))
    return Capability(
        platform=platform,
        device_kind=kind,
        compute_capability=cc,
        gpu_vendor=vendor,
        hopper_import_error=_probe_hopper_imports(),
    )


def _probe_hopper_imports() -> str | None:
    """The first JAX module the hopper backend's kernels need that does not import here, and why; ``None`` if all do.

    Each of its modules guards its own imports (so that the package imports without them) and records the failure:
    Pallas Triton (deprecated in jax 0.11), Mosaic GPU, and the private modules through which ``ptx_launch`` reaches
    jaxlib's launcher.
    """
    from mxfp8_xla.backends import hopper_mosaic, pallas_quantize, ptx_launch

    for what, error in (
        ("jax.experimental.pallas.triton", pallas_quantize.IMPORT_ERROR),
        ("jax.experimental.pallas.mosaic_gpu", hopper_mosaic.IMPORT_ERROR),
        ("jax's private modules behind jaxlib's PTX launcher", ptx_launch.IMPORT_ERROR),
    ):
        if error is not None:
            return f"{what}: {error}"
    return None


@functools.lru_cache(maxsize=1)
def _probe_torch() -> tuple[str | None, str | None, bool]:
    """``(version, error, has_cuda)``; imports torch (about a second the first time)."""
    try:
        import torch

        return torch.__version__, None, bool(torch.version.cuda) and torch.cuda.is_available()
    except Exception as e:  # noqa: BLE001 - any import failure makes torch unusable
        return None, f"{type(e).__name__}: {e}", False


@functools.lru_cache(maxsize=1)
def _probe_flashinfer() -> tuple[str | None, str | None]:
    """``(version, error)``; imports flashinfer (several seconds the first time)."""
    try:
        import flashinfer

        return str(getattr(flashinfer, "__version__", "unknown")), None
    except Exception as e:  # noqa: BLE001 - import errors of any kind mean "not usable"
        return None, f"{type(e).__name__}: {e}"


_override: Capability | None = None


def _with_torch(cap: Capability) -> Capability:
    if cap.torch_version is not None or cap.torch_error is not None:
        return cap
    version, error, cuda = _probe_torch()
    cap = dataclasses.replace(cap, torch_version=version, torch_error=error, torch_cuda=cuda)
    if cap.compute_capability is None and cap.gpu_vendor == "cuda" and cuda:
        import torch

        cap = dataclasses.replace(cap, compute_capability=tuple(torch.cuda.get_device_capability(0)))
    return cap


def _with_flashinfer(cap: Capability) -> Capability:
    if cap.flashinfer_version is not None or cap.flashinfer_error is not None:
        return cap
    version, error = _probe_flashinfer()
    return dataclasses.replace(cap, flashinfer_version=version, flashinfer_error=error)


def probe_capability(*, torch: bool = False, flashinfer: bool = False) -> Capability:
    """This process's (cached) capability: devices always; torch/flashinfer status on request.

    Importing torch and flashinfer is slow, so they are probed only when a
    decision needs them (``torch=True``/``flashinfer=True`` probe them now).
    Inside :func:`override_capability` the given capability is returned, with
    unset torch/flashinfer fields probed for real.
    """
    cap = _override if _override is not None else _probe_devices()
    if torch or flashinfer:
        cap = _with_torch(cap)
    if flashinfer:
        cap = _with_flashinfer(cap)
    return cap


@contextlib.contextmanager
def override_capability(cap: Capability) -> Iterator[Capability]:
    """Make :func:`probe_capability` return ``cap`` inside the block (tests, dry runs)."""
    global _override
    previous = _override
    _override = cap
    _logged.clear()
    try:
        yield cap
    finally:
        _override = previous
        _logged.clear()


def _torch_problems(cap: Capability) -> list[str]:
    if cap.torch_version is None:
        return [f"torch does not import ({cap.torch_error or 'not installed'})"]
    if cap.platform == "gpu" and not cap.torch_cuda:
        return [f"torch {cap.torch_version} has no CUDA device but JAX runs on {cap.describe()}"]
    return []


def backend_problems(
    backend: str, *, n: int, k: int, out_dtype: object = jnp.bfloat16, capability: Capability | None = None
) -> list[str]:
    """Why ``backend`` cannot serve ``x [..., k] @ w[n, k].T -> out_dtype`` here (empty: it can).

    torch and flashinfer are imported only when the device and shape checks pass.
    """
    out_dtype = jnp.dtype(out_dtype)
    if backend == "emulation":
        return []
    if backend not in ("torch", "flashinfer", "hopper"):
        raise ValueError(f"unknown MXFP8 backend {backend!r}; choose one of {SELECTABLE}")
    cap = capability or probe_capability()
    problems: list[str] = []

    if backend == "hopper":
        if cap.platform != "gpu" or cap.gpu_vendor not in (None, "cuda"):
            problems.append(f"the device is {cap.describe()}; the hopper kernel needs an NVIDIA SM90 GPU")
        elif cap.sm != 90:
            problems.append(f"{cap.device_kind} is SM{cap.sm}; the hopper kernel is built and measured for SM90 only")
        if cap.hopper_import_error is not None:
            problems.append(
                f"jax {jax.__version__} lacks a module the hopper backend's kernels are built on "
                f"({cap.hopper_import_error})"
            )
        if k % BLOCK_SIZE:
            problems.append(f"K={k} is not a multiple of {BLOCK_SIZE} (the MXFP8 block)")
        return problems

    if backend == "torch":
        if cap.platform not in ("cpu", "gpu"):
            return [f"the device is {cap.describe()}; the torch bridge runs on CPU and GPU only"]
        return _torch_problems(_with_torch(cap))

    # flashinfer: device, then shape, then (only if still possible) the slow imports.
    if cap.platform != "gpu" or cap.gpu_vendor not in (None, "cuda"):
        problems.append(f"the device is {cap.describe()}; FlashInfer mm_mxfp8 needs an NVIDIA Blackwell GPU (SM100+)")
    elif cap.sm is None:
        problems.append(f"the compute capability of {cap.device_kind} is unknown; mm_mxfp8 needs SM100+")
    elif cap.sm < 100:
        problems.append(f"{cap.device_kind} is SM{cap.sm}; FlashInfer mm_mxfp8 needs SM100+ (Blackwell)")
    if k % BLOCK_SIZE:
        problems.append(f"K={k} is not a multiple of {BLOCK_SIZE}")
    if k < FLASHINFER_MIN_K:
        problems.append(f"K={k} < {FLASHINFER_MIN_K} (mm_mxfp8 minimum)")
    if n < FLASHINFER_MIN_N:
        problems.append(f"N={n} < {FLASHINFER_MIN_N} (mm_mxfp8 minimum)")
    if cap.sm is not None and 120 <= cap.sm < 130 and n % 32:
        problems.append(f"N={n} is not a multiple of 32 (mm_mxfp8 on SM12x)")
    if out_dtype not in FLASHINFER_OUT_DTYPES:
        problems.append(f"out_dtype {out_dtype} is not supported (mm_mxfp8 writes bfloat16 or float16)")
    if not problems:
        cap = _with_torch(cap)
        problems += _torch_problems(cap)
    if not problems:
        cap = _with_flashinfer(cap)
        if cap.flashinfer_version is None:
            problems.append(f"flashinfer does not import ({cap.flashinfer_error})")
    return problems


def _requested(backend: str | None) -> tuple[str, str | None]:
    """``(backend, forced_by)``; ``forced_by`` is None for auto."""
    if backend is None or backend == "auto":
        env = os.environ.get(BACKEND_ENV, "").strip()
        if env and env != "auto":
            if env not in SELECTABLE:
                raise ValueError(f"{BACKEND_ENV}={env!r} is not a backend; choose one of {SELECTABLE}")
            return env, f"{BACKEND_ENV}={env}"
        return "auto", None
    if backend not in SELECTABLE:
        raise ValueError(f"unknown MXFP8 backend {backend!r}; choose one of {SELECTABLE}")
    return backend, f"backend={backend!r}"


def _where(name: str | None, n: int, k: int, out_dtype: object) -> str:
    return f"layer {name or 'mxfp8_matmul'!r} (x [..., {k}] @ w [{n}, {k}].T -> {jnp.dtype(out_dtype)})"


_logged: set[tuple[str, int, int, str, str]] = set()


def log_weight_unswizzle(backend: str, *, n: int, k: int, out_dtype: object, name: str | None = None) -> None:
    """Log, once per (layer, shape, backend), that a ``FlashInferWeight`` reaches a backend other than flashinfer,
    which undoes its scales' swizzle inside every call: as a warning on a GPU backend (where that permutation of
    ``N * K / 32`` bytes is a separate pass on every call), at info level on emulation."""
    key = (name or "mxfp8_matmul", n, k, str(jnp.dtype(out_dtype)), f"unswizzle:{backend}")
    if key in _logged:
        return
    _logged.add(key)
    level = logging.INFO if backend == "emulation" else logging.WARNING
    logger.log(
        level,
        "mxfp8_xla: %s: backend %r undoes the FlashInfer swizzle of this weight's scales inside every call "
        "(%d bytes); give it the [N, K/32] scales (an MXArray, or params without swizzle_params) where flashinfer "
        "does not run",
        _where(name, n, k, out_dtype),
        backend,
        n * k // 32,
    )


def require_backend(
    backend: str,
    *,
    n: int,
    k: int,
    out_dtype: object = jnp.bfloat16,
    name: str | None = None,
    forced_by: str | None = None,
    capability: Capability | None = None,
) -> None:
    """Raise :class:`BackendUnavailableError` unless ``backend`` can serve this layer here."""
    problems = backend_problems(backend, n=n, k=k, out_dtype=out_dtype, capability=capability)
    if problems:
        forced_by = forced_by or f"backend={backend!r}"
        hint = (
            f"unset {BACKEND_ENV} or set it to 'auto'"
            if forced_by.startswith(BACKEND_ENV)
            else ("use backend='auto' (picks a backend that can serve, emulation at worst) or 'emulation'")
        )
        raise BackendUnavailableError(
            f"mxfp8_xla: {_where(name, n, k, out_dtype)} cannot use backend {backend!r} "
            f"(requested by {forced_by}): " + "; ".join(problems) + f". To run anyway, {hint}."
        )


def select_backend(
    backend: str | None = "auto",
    *,
    n: int,
    k: int,
    out_dtype: object = jnp.bfloat16,
    name: str | None = None,
    capability: Capability | None = None,
) -> str:
    """The concrete backend (``"emulation"``, ``"torch"``, ``"flashinfer"`` or ``"hopper"``) for a layer.

    ``n``/``k``: the weight is ``[n, k]``. Call it when the layer is set up so
    that problems surface early. Forced backends that cannot serve raise
    :class:`BackendUnavailableError`; ``"auto"`` falls back to emulation and
    logs the reason once per (layer, shape): as a warning on a GPU, where emulation is the slow path (it decodes
    the weight to float32 on every call), at info level elsewhere.
    """
    requested, forced_by = _requested(backend)
    if requested != "auto":
        require_backend(requested, n=n, k=k, out_dtype=out_dtype, name=name, forced_by=forced_by, capability=capability)
        return requested
    problems = backend_problems("flashinfer", n=n, k=k, out_dtype=out_dtype, capability=capability)
    if not problems:
        choice, why = "flashinfer", "SM100+ GPU, flashinfer imports, shape fits"
    else:
        hopper_problems = backend_problems("hopper", n=n, k=k, out_dtype=out_dtype, capability=capability)
        choice = "emulation" if hopper_problems else "hopper"
        why = "flashinfer: " + "; ".join(problems)
        why += "; hopper: " + "; ".join(hopper_problems) if hopper_problems else "; SM90 GPU, hopper kernel fits"
    key = (name or "mxfp8_matmul", n, k, str(jnp.dtype(out_dtype)), choice)
    if key not in _logged:
        _logged.add(key)
        on_gpu = (capability or probe_capability()).platform == "gpu"
        level = logging.WARNING if choice == "emulation" and on_gpu else logging.INFO
        logger.log(level, "mxfp8_xla: %s: backend 'auto' -> %r (%s)", _where(name, n, k, out_dtype), choice, why)
    return choice
