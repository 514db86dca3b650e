"""The hopper backend at one activation row: one CUDA-core GEMV launch (``gemv.cu``).

At one row a linear layer is a stream of its weight, and the Pallas path costs three
launches (activation quantization, GEMM, K-split sum) around a GEMM that reads the fp8
weight at about half of what XLA reads. This kernel takes the raw bf16 row: every CTA
quantizes it exactly (the rule of :func:`mxfp8_xla.numerics.quantize_blocks`) into shared
memory while its first weight loads are in flight, then its warps stream groups of weight
rows as stored (``[N, K]``, no preparation), decode each element exactly, multiply it by its
block factor (so an element that overflows float32 does so as emulation's does) and
accumulate in float32; the output dtype is written directly.

On an H200 (docs/benchmarks.md, "One launch for one row") it measured 1.20-1.43x of bf16
``jnp.dot`` at five Llama-3-8B shapes against the Pallas path's 0.87-1.14x (0.70x against
0.51x at the sixth, (1024, 4096)), agreed with emulation to 1.6e-7 (float32 out), and matched
it on every edge case (scale bytes 0, 1, 254, 255, an E4M3 NaN byte, an Inf or NaN in the
activation, ties, subnormals). Those were the source built by ``nvcc`` with each shape's best
configuration; this module's PTX and :func:`config` had not run on a GPU when it shipped.

``gemv.ptx`` is ``gemv.cu`` compiled by :func:`build_ptx` (NVRTC 12.1, PTX ISA 8.1, so any
CUDA 12 driver JIT-compiles it); :func:`mxfp8_xla.backends.ptx_launch.launch` runs it.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp

from mxfp8_xla.backends import ptx_launch
from mxfp8_xla.mxarray import MXArray

SOURCE = Path(__file__).with_name("gemv.cu")
PTX = Path(__file__).with_name("gemv.ptx")
MAX_K = 49152
"""The decoded row (4 bytes an element) must fit the CTA's shared memory (227 KB on SM90) with room for 4 CTAs at
K <= 14336; past this K one CTA per SM would not fit either, so wider rows take the Pallas path."""
DEFAULT_SMS = 132
"""H100 SXM and H200; used where the device does not report its SM count."""


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    """A kernel instantiated in ``gemv.cu`` and how to launch it."""

    rows_per_warp: int  # weight rows a warp streams together (they share each read of the activation)
    chunks: int  # 16-byte chunks per lane, row and round: K % (512 * chunks) == 0
    warps: int = 8  # per CTA
    warps_per_sm: int = 32  # the grid: at most this many resident warps per SM, each looping over row groups

    def kernel(self, out_dtype: jnp.dtype) -> str:
        suffix = "f32" if jnp.dtype(out_dtype) == jnp.float32 else "bf16"
        return f"mxfp8_gemv_w{self.warps}_g{self.rows_per_warp}_c{self.chunks}_p0_e1_{suffix}"

    def grid(self, n: int, sms: int) -> int:
        """CTAs: one per ``warps * rows_per_warp`` rows, at most ``warps_per_sm / warps`` per SM."""
        return min(-(-n // (self.warps * self.rows_per_warp)), sms * self.warps_per_sm // self.warps)


def config(n: int, k: int) -> GemvConfig | None:
    """The configuration for a weight ``[N, K]``, or ``None`` where the kernel cannot take it.

    It measured within 4% of the best of 18 configurations at five of the six Llama-3-8B shapes
    and 9% at the sixth (``cuda_gemv_probe.py`` on an H200); N <= 2048 streams one row a warp.
    """
    chunks = 4 if k % 2048 == 0 else 2 if k % 1024 == 0 else None
    rows = 1 if n <= 2048 else 2
    if chunks is None or k > MAX_K or n % rows:
        return None
    return GemvConfig(rows_per_warp=rows, chunks=chunks)


def serves(x: jax.Array | MXArray, w: MXArray) -> bool:
    """Whether this kernel computes ``x @ w.T``: one raw bf16 row and a weight :func:`config` takes."""
    *lead, k = x.shape
    return (
        not isinstance(x, MXArray)
        and x.dtype == jnp.bfloat16
        and all(d == 1 for d in lead)
        and config(w.shape[0], k) is not None
    )


@functools.cache
def _ptx() -> str:
    return PTX.read_text()


def _sms() -> int:
    return getattr(jax.local_devices()[0], "core_count", None) or DEFAULT_SMS


def entry_ptx(ptx: str, name: str) -> str:
    """A PTX module's header and declarations with its one entry ``name``: the driver JIT-compiles the module
    a launch names once per process, and one kernel's module compiles in milliseconds."""
    head, *entries = ptx.split(".visible .entry ")
    (body,) = [e for e in entries if e.startswith(name + "(")]
    return head + ".visible .entry " + body


def matmul_row(x: jax.Array, w: MXArray, out_dtype: jnp.dtype) -> jax.Array:
    """``x [..., K]`` (one bf16 row) times ``w [N, K]`` -> ``[..., N]`` in ``out_dtype``, in one launch.

    bf16 and float32 are written by the kernel; another dtype is rounded from float32, as
    emulation rounds its float32 product.
    """
    *lead, k = x.shape
    n = w.shape[0]
    if not serves(x, w):
        raise ValueError(
            f"hopper backend, one-row kernel: cannot take x {tuple(x.shape)} {jnp.dtype(x.dtype).name} @ w "
            f"[{n}, {k}].T (it needs one bfloat16 row, K % 1024 == 0, K <= {MAX_K})"
        )
    cfg = config(n, k)
    kernel_dtype = jnp.bfloat16 if jnp.dtype(out_dtype) == jnp.bfloat16 else jnp.float32
    name = cfg.kernel(kernel_dtype)
    out = ptx_launch.launch(
        jax.lax.bitcast_convert_type(w.data, jnp.uint8),
        w.scale,
        x.reshape(1, k),
        jnp.array([1, n, k], jnp.int32),
        name=name,
        ptx=entry_ptx(_ptx(), name),
        grid=(cfg.grid(n, _sms()), 1),
        warps=cfg.warps,
        out_shape=(1, n),
        out_dtype=kernel_dtype,
        smem=4 * k,
    )
    return out.astype(out_dtype).reshape(*lead, n)


def build_ptx(source: Path = SOURCE, defines: tuple[str, ...] = ()) -> str:
    """``source`` compiled to PTX for compute_90 by NVRTC (``pip install cuda-bindings nvidia-cuda-nvrtc-cu12``;
    ``gemv.ptx`` was built with NVRTC 12.1, whose PTX ISA 8.1 every CUDA 12 driver reads)."""
    from cuda.bindings import nvrtc

    def check(result):
        err, *rest = result
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"NVRTC: {err}")
        return rest[0] if rest else None

    prog = check(nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], []))
    opts = [b"--gpu-architecture=compute_90", b"-std=c++17", *(f"-D{d}".encode() for d in defines)]
    err, *_ = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = b" " * check(nvrtc.nvrtcGetProgramLogSize(prog))
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(f"NVRTC could not compile {source.name}:\n{log.decode(errors='replace')}")
    ptx = b" " * check(nvrtc.nvrtcGetPTXSize(prog))
    check(nvrtc.nvrtcGetPTX(prog, ptx))
    return ptx.rstrip(b"\x00").decode()


if __name__ == "__main__":  # python -m mxfp8_xla.backends.cuda_gemv: rebuild gemv.ptx from gemv.cu
    PTX.write_text(build_ptx())
    print(f"wrote {PTX}")
