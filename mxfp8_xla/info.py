"""``mxfp8_xla.info()`` / ``python -m mxfp8_xla info``: what can run here, and why not."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import jax
import jax.numpy as jnp

from mxfp8_xla.backends import cuda_gemv, hopper_mosaic, ptx_launch
from mxfp8_xla.backends.hopper import BLOCK_LOADS_MIN_ROWS, SMALL_M_KERNEL_ENV, small_m_choice
from mxfp8_xla.backends.select import (
    BACKEND_ENV,
    FLASHINFER_MIN_K,
    FLASHINFER_MIN_N,
    FLASHINFER_OUT_DTYPES,
    BackendUnavailableError,
    backend_problems,
    probe_capability,
    select_backend,
)
from mxfp8_xla.interop import COMMAND_BUFFER_ENV

# A representative large layer for the "usable" column; shape limits are listed separately.
_PROBE_N = 4096
_PROBE_K = 4096


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return None
    return str(getattr(mod, "__version__", "unknown"))


def info() -> dict[str, Any]:
    """Devices, compute capability, library versions, and which backends are usable here."""
    from mxfp8_xla import __version__

    cap = probe_capability(torch=True, flashinfer=True)
    devices = []
    for d in jax.devices():
        devices.append(
            {
                "id": d.id,
                "platform": d.platform,
                "kind": getattr(d, "device_kind", d.platform),
                "compute_capability": getattr(d, "compute_capability", None),
            }
        )
    torch_cuda = None
    if cap.torch_version is not None:
        import torch

        torch_cuda = torch.version.cuda
    backends = {}
    for name in ("emulation", "torch", "flashinfer", "hopper"):
        problems = backend_problems(name, n=_PROBE_N, k=_PROBE_K, out_dtype=jnp.bfloat16, capability=cap)
        backends[name] = {"usable": not problems, "why_not": problems or None}
    try:
        auto = select_backend("auto", n=_PROBE_N, k=_PROBE_K, out_dtype=jnp.bfloat16, name="info", capability=cap)
    except (ValueError, BackendUnavailableError) as e:  # a bad or unusable MXFP8_XLA_BACKEND: reported, not raised
        auto = f"none: {e}"
    try:
        one_row = cuda_gemv.config(_PROBE_N, _PROBE_K).kernel(jnp.bfloat16) if small_m_choice() == "auto" else None
    except ValueError as e:  # a bad MXFP8_XLA_HOPPER_SMALL_M: report it, as a trace would raise it
        one_row = f"none: {e}"
    return {
        "mxfp8_xla": __version__,
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.machine()}",
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "torch": cap.torch_version,
        "torch_cuda": torch_cuda,
        "torch_error": cap.torch_error,
        "flashinfer": cap.flashinfer_version,
        "flashinfer_error": cap.flashinfer_error,
        "default_backend": jax.default_backend(),
        "devices": devices,
        "compute_capability": cap.compute_capability,
        "backends": backends,
        "auto_choice": {"shape": f"w [{_PROBE_N}, {_PROBE_K}], out bfloat16", "backend": auto},
        "flashinfer_shape_rules": (
            f"K % 32 == 0, K >= {FLASHINFER_MIN_K}, N >= {FLASHINFER_MIN_N}, out "
            + "/".join(d.name for d in FLASHINFER_OUT_DTYPES)
        ),
        "hopper_one_row": {
            "shape": f"x [1, {_PROBE_K}] bfloat16, w [{_PROBE_N}, {_PROBE_K}]",
            "kernel": one_row or f"none ({SMALL_M_KERNEL_ENV})",
            "launcher_missing": ptx_launch.unavailable(),
        },
        "hopper_mosaic_weight_loads": (
            f"block by block from {BLOCK_LOADS_MIN_ROWS} padded rows (this jaxlib's Mosaic GPU compiles for linking, "
            "where ptxas ignores setmaxnreg)"
            if hopper_mosaic.setmaxnreg_ignored()
            else "whole tiles"
        ),
        "env": {
            BACKEND_ENV: os.environ.get(BACKEND_ENV),
            COMMAND_BUFFER_ENV: os.environ.get(COMMAND_BUFFER_ENV),
            SMALL_M_KERNEL_ENV: os.environ.get(SMALL_M_KERNEL_ENV),
        },
    }


def _format(report: dict[str, Any]) -> str:
    lines = []
    for key, value in report.items():
        if key == "devices":
            lines.append("devices:")
            for d in value:
                cc = f", compute capability {d['compute_capability']}" if d["compute_capability"] else ""
                lines.append(f"  [{d['id']}] {d['platform']}: {d['kind']}{cc}")
        elif key == "backends":
            lines.append("backends:")
            for name, b in value.items():
                status = "usable" if b["usable"] else "not usable: " + "; ".join(b["why_not"])
                lines.append(f"  {name:<10} {status}")
        elif key == "env":
            lines.append("env:")
            lines.extend(f"  {k}={v if v is not None else '(unset)'}" for k, v in value.items())
        elif key.endswith("_error") and value is None:
            continue
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def main() -> int:
    """Print :func:`info` for ``python -m mxfp8_xla info``."""
    print(_format(info()))
    return 0
