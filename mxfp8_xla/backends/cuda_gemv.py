"""The hopper backend at one to eight activation rows: one GEMV launch (``gemv.cu``), on the CUDA cores for one or
two rows and on the tensor cores for three to eight, each reading bfloat16, float16 or float32 rows.

At one row a linear layer is a stream of its weight, and the Pallas path costs three
launches (activation quantization, GEMM, K-split sum) around a GEMM that reads the fp8
weight at about half of what XLA reads. This kernel takes the raw rows. The CTA's K / 16
threads split K, one 16-element chunk of every row each: each thread quantizes its own chunk
of each activation row exactly (the rule of :func:`mxfp8_xla.numerics.quantize_blocks`) into registers
while its first weight loads are in flight. The CTA then streams units of 4 weight rows as
stored (``[N, K]``, no preparation), decodes each element exactly, multiplies it by its block
factor (so an element that overflows float32 does so as emulation's does), accumulates in
float32, sums over its threads and writes the output dtype directly.

On an H200 (docs/benchmark_log.md, "The K split across the CTA"; three runs of
``cuda_gemv_probe.py``) it measured 1.63-1.72x of bf16 ``jnp.dot`` at (14336, 4096) and
(28672, 4096), 1.52-1.62x at (4096, 14336), 1.44-1.56x at (6144, 4096) and (4096, 4096) and
0.95-0.96x at (1024, 4096), where the Pallas path ran 0.52-1.13x; it streams the weight at
2.9-3.6 TB/s at the wide shapes, agreed with emulation to 1.8e-7 (float32 out) and matched it
on every edge case (scale bytes 0, 1, 254, 255, an E4M3 NaN byte, an Inf or NaN in the
activation, ties, subnormals). A 4-block Llama-3-8B decode at batch 1 ran 1.44-1.47x of bf16 with
the decode loop compiled with :data:`mxfp8_xla.DECODE_LOOP_COMPILER_OPTIONS` (1.33-1.35x without it;
docs/benchmark_log.md, "The slow mode's cause").

At two rows (each decoded weight element serves both; K <= 8192) the probe's build of the same
kernel measured 1.22-1.41x of bf16 at the five K = 4096 Llama-3-8B shapes, where the Pallas path
ran 0.71-1.12x, 1.5e-7 to 3.2e-7 from emulation and equal to it on the edge cases (benchmark_log.md,
"The K split across the CTA", "Two and four rows"); the library's route ran 1.22-1.42x and 1.19-1.34x in
two runs ("The slow mode's cause", "RMSNorm inside the decode step"). At four rows the CUDA cores run out
(0.70-0.82x).

Three to eight rows (``mxfp8_gemv_mma_r8``, since the fifteenth session) keep the split of K across the CTA (K / 4
threads, four 32-blocks a warp) and run the products on the tensor cores: units of 8 weight rows as an f16 MMA's A
operand, the activation rows, quantized once into registers, as its B operand; 16-byte weight loads, one 8-byte swap
between lane pairs so that each quad holds one block, and each block's float32 sums scaled by both factors. Units
whose scales that scaling cannot take exactly (see ``gemv_mma``) are computed again with emulation's arithmetic. On an
H200 the route ran 1.18-1.22x of bf16 at (14336, 4096) and 1.21-1.24x at (28672, 4096) at 3, 4 and 8 rows, where the
Pallas path ran 1.03-1.04x and 1.07-1.11x; 3.2e-7 to 1.3e-6 from emulation (float32 out) and equal to it on every edge
case; with the route at N >= 14336 only, a 4-block Llama-3-8B decode at batch 8 ran 1.11x of bf16 (0.483 and 0.489
ms a step, two processes) where the Pallas path ran 1.05x (0.515) (docs/benchmark_log.md, "Eight rows on the tensor
cores"). With the route opened to every K = 4096 shape (one run, 8 rows) it ran 1.09x at (6144, 4096), 1.01x at
(4096, 4096) and 0.78x at (1024, 4096), where the Pallas path ran 0.93x, 0.92x and 0.74x. Its arithmetic was bound by
the SM's ALU pipe; with fewer instructions there (nineteenth session: ``cvt_pair_hi``, factors and addresses as integer
multiply-adds) 8 rows ran 1.19-1.35x at (14336, 4096) and (28672, 4096) in ten runs (two of them of a build with the
load addresses as before), equal to emulation on every edge case, and the batch-8 decode 1.16-1.17x
(docs/benchmark_log.md, "The tensor-core GEMV's ALU pipe" and "What is left in the tensor-core GEMV").

:func:`add_norm_rows` runs the one-row kernel with a residual add and an RMSNorm in front (``add_norm_chunk`` in
``gemv.cu``; :func:`mxfp8_xla.add_rms_norm_matmul`): on an H200 it saved 2.2 us a call against XLA's norm and the GEMV,
with the same products, and 12 us a step of a 4-block Llama decode at batch 1 (docs/benchmark_log.md, "RMSNorm inside
the decode step"). Its row is bf16 or float32 and its norm weight bf16 or float32, each pair a kernel that rounds where
:mod:`mxfp8_xla.norm` does; the float32 pairs saved up to 1.0 us a call, within noise at (28672, 4096)
(docs/benchmark_log.md, "Float32 rows behind the add and norm").

Every kernel has a twin for float32 rows (``_xf32``; Flax layers compute in float32 unless their ``dtype`` says
otherwise): the same code, its activation loads twice as wide. Each quantizes the float32 rows directly, as emulation
does; rounding them to bf16 first would round twice. float16 rows are widened to float32 first, which is exact. On an
H200 float32 rows took at most 8% longer than bf16 rows (at most 3% at the three wide Llama-3-8B shapes), equal to
emulation on every edge case (docs/benchmark_log.md, "Float32 rows in the GEMV kernels").

``gemv.ptx`` is ``gemv.cu`` compiled by :func:`build_ptx` (NVRTC 12.1, PTX ISA 8.1, so any CUDA 12 driver JIT-compiles
it); :func:`mxfp8_xla.backends.ptx_launch.launch` runs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import math
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp

from mxfp8_xla.backends import ptx_launch
from mxfp8_xla.mxarray import MXArray

SOURCE = Path(__file__).with_name("gemv.cu")
PTX = Path(__file__).with_name("gemv.ptx")
MAX_K = {1: 16384, 2: 8192}
"""The largest K for one and for two activation rows: K / 16 threads a CTA, at most the kernel's launch bound."""
ROWS = 4
"""Weight rows a CTA's unit of work: N % 4 == 0."""
MMA_ROWS = range(3, 9)
"""Activation rows the tensor-core kernel takes."""
ACTIVATION_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
"""The raw activation dtypes :func:`matmul_rows` takes: bfloat16 and float32 rows as they are, float16 widened to
float32 (exact)."""
ADD_NORM_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))
"""The dtypes the add-and-norm kernels take for the row and its ``delta`` (one of them for both) and, independently,
for the norm weight."""
THREADS_PER_SM = {1: 1024, 2: 512, **dict.fromkeys(MMA_ROWS, 1024)}
"""What the register file holds at the one-row and tensor-core kernels' 64 registers a thread and the two-row kernel's
95-100 (ptxas, sm_90): the grid keeps at most this many a SM."""
MMA_MAX_K = 4096
"""The tensor-core kernel's largest K: K / 4 threads a CTA (four 32-blocks a warp), at most 1024."""
MMA_UNIT = 8
"""Weight rows a unit of the tensor-core kernel: N % 8 == 0."""
MMA_MAX_N = 1 << 18
"""The tensor-core kernel's largest N: it marks the units that need its exact path in a 2048-bit mask a CTA, so a CTA
takes at most 2048 units of 8 rows (at 16 or more CTAs)."""
MMA_MIN_N = 1024
"""The tensor-core kernel serves N >= this, the smallest N measured: on an H200 the library's build beat the Pallas
path at 8 rows of all five K = 4096 Llama-3-8B shapes, (1024, 4096) included (docs/benchmark_log.md, "Eight rows on the
tensor cores")."""
DEFAULT_SMS = 132
"""H100 SXM and H200; used where the device does not report its SM count."""


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    """A kernel instantiated in ``gemv.cu`` and how to launch it."""

    threads: int  # K / 16 (thread t owns the 16-element chunk t of every row), or K / 4 for the tensor cores
    m: int = 1  # activation rows
    rows: int = ROWS  # a unit of work: these weight rows, all of K

    @property
    def tensor_cores(self) -> bool:
        """Whether these rows run the tensor-core kernel (3-8 rows) rather than the CUDA-core one."""
        return self.m in MMA_ROWS

    def kernel(
        self, out_dtype: jnp.dtype, x_dtype: jnp.dtype = jnp.bfloat16, norm_dtype: jnp.dtype | None = None
    ) -> str:
        """The kernel's name for activation rows of ``x_dtype`` (bfloat16 or float32); with ``norm_dtype`` (that of
        the norm weight, bfloat16 or float32), the one-row kernel with the residual add and RMSNorm in front."""
        suffix = "f32" if jnp.dtype(out_dtype) == jnp.float32 else "bf16"
        rows_dtype = "_xf32" if jnp.dtype(x_dtype) == jnp.float32 else ""
        if self.tensor_cores:
            return f"mxfp8_gemv_mma_r{self.rows}{rows_dtype}_{suffix}"
        if norm_dtype is None:
            rows = f"_m{self.m}" if self.m > 1 else ""
            return f"mxfp8_gemv_split_c1_r{self.rows}{rows}{rows_dtype}_{suffix}"
        norm_dtype = jnp.dtype(norm_dtype)
        norm = "" if norm_dtype == jnp.dtype(x_dtype) else "_nf32" if norm_dtype == jnp.float32 else "_nbf16"
        return f"mxfp8_gemv_split_c1_r{self.rows}_addnorm{rows_dtype}{norm}_{suffix}"

    def grid(self, n: int, sms: int) -> int:
        """CTAs: one per unit, at most ``THREADS_PER_SM[m] / threads`` (at least one) per SM, each looping over
        units."""
        return min(n // self.rows, sms * max(1, THREADS_PER_SM[self.m] // self.threads))


def config(n: int, k: int, m: int = 1) -> GemvConfig | None:
    """The configuration for ``m`` activation rows times a weight ``[N, K]``, or ``None`` where no kernel takes them.

    One or two rows: the CUDA-core kernel (K % 512 == 0, K up to :data:`MAX_K`, N % 4 == 0). Three to eight rows: the
    tensor-core kernel (K % 128 == 0, K <= :data:`MMA_MAX_K`, K / 4 >= 8 x rows, N % 8 == 0, :data:`MMA_MIN_N` <= N <=
    :data:`MMA_MAX_N`): its K / 4 threads sum a unit's 8 x rows outputs one a thread, so at K = 128 it takes at most
    four rows (five to eight rows there once returned rows 4-7 unwritten; docs/benchmark_log.md, "The tensor-core GEMV's
    ALU pipe").

    Of the K-split configurations ``cuda_gemv_probe.py`` measured on an H200 at one row and the six Llama-3-8B shapes
    (units of 2, 4 or 8 rows; 1, 2 or 4 CTAs an SM; one or two chunks a thread) this one was within 14% of the best
    in the first sweep and within 4% in the last, whose cells were timed as the library is; the probe's two-row runs
    used it at K = 4096.
    """
    if m in MMA_ROWS:
        if k % 128 or k > MMA_MAX_K or k // 4 < MMA_UNIT * m or n % MMA_UNIT or not MMA_MIN_N <= n <= MMA_MAX_N:
            return None
        return GemvConfig(threads=k // 4, m=m, rows=MMA_UNIT)
    if m not in MAX_K or k % 512 or k > MAX_K[m] or n % ROWS:
        return None
    return GemvConfig(threads=k // 16, m=m)


def serves(x: jax.Array | MXArray, w: MXArray) -> bool:
    """Whether a kernel here computes ``x @ w.T``: one to eight raw rows of a dtype in :data:`ACTIVATION_DTYPES` and a
    weight :func:`config` takes."""
    *lead, k = x.shape
    if isinstance(x, MXArray) or jnp.dtype(x.dtype) not in ACTIVATION_DTYPES:
        return False
    return config(w.shape[0], k, math.prod(lead)) is not None


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


def matmul_rows(x: jax.Array, w: MXArray, out_dtype: jnp.dtype) -> jax.Array:
    """``x [..., K]`` (one to eight bfloat16, float16 or float32 rows) times ``w [N, K]`` -> ``[..., N]`` in
    ``out_dtype``, in one launch (float16 rows are widened to float32 first, exactly).

    bf16 and float32 are written by the kernel; another dtype is rounded from float32, as
    emulation rounds its float32 product.
    """
    *lead, k = x.shape
    n, m = w.shape[0], math.prod(lead)
    if not serves(x, w):
        *others, last = (d.name for d in ACTIVATION_DTYPES)
        raise ValueError(
            f"hopper backend, GEMV kernel: cannot take x {tuple(x.shape)} {jnp.dtype(x.dtype).name} @ w "
            f"[{n}, {k}].T (it needs one or two {', '.join(others)} or {last} rows, K % 512 == 0, K <= {MAX_K[1]} for "
            f"one row and <= {MAX_K[2]} for two, N % {ROWS} == 0; or {MMA_ROWS.start} to {MMA_ROWS.stop - 1} such "
            f"rows, K % 128 == 0, K <= {MMA_MAX_K}, K >= 32 x rows, N % {MMA_UNIT} == 0, {MMA_MIN_N} <= N <= "
            f"{MMA_MAX_N})"
        )
    rows = x.reshape(m, k).astype(jnp.float32 if x.dtype == jnp.float16 else x.dtype)
    out = _launch(config(n, k, m), w, rows, out_dtype=out_dtype)
    return out.astype(out_dtype).reshape(*lead, n)


def serves_add_norm(x: jax.Array, delta: jax.Array, norm_weight: jax.Array, w: MXArray) -> bool:
    """Whether an add-and-norm kernel computes :func:`add_norm_rows`: one row and its ``delta``, both bfloat16 or both
    float32, a bfloat16 or float32 norm weight ``[K]``, and a weight the one-row kernel takes."""
    return (
        serves(x, w)
        and math.prod(x.shape[:-1]) == 1
        and delta.shape == x.shape
        and norm_weight.shape == x.shape[-1:]
        and x.dtype == delta.dtype
        and x.dtype in ADD_NORM_DTYPES
        and norm_weight.dtype in ADD_NORM_DTYPES
    )


def add_norm_rows(
    x: jax.Array, delta: jax.Array, norm_weight: jax.Array, eps: float, w: MXArray, out_dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array]:
    """``(RMSNorm(x + delta) @ w.T, x + delta)`` for one bfloat16 or float32 row, in one launch of an add-and-norm
    kernel.

    The sum is :func:`mxfp8_xla.norm.add`, in ``x``'s dtype, and the norm :func:`mxfp8_xla.norm.rms_norm` with
    ``norm_weight [K]`` (bfloat16 or float32) and ``eps``, each with its roundings; the product is in ``out_dtype``
    (bf16 and float32 written by the kernel, another dtype rounded from float32).
    """
    *lead, k = x.shape
    n = w.shape[0]
    if not serves_add_norm(x, delta, norm_weight, w):
        raise ValueError(
            f"hopper backend, add-and-norm GEMV kernel: cannot take x {tuple(x.shape)} {jnp.dtype(x.dtype).name}, "
            f"delta {tuple(delta.shape)} {jnp.dtype(delta.dtype).name}, norm_weight {tuple(norm_weight.shape)} "
            f"{jnp.dtype(norm_weight.dtype).name} @ w [{n}, {k}].T (it needs one bfloat16 or float32 row, delta of "
            f"its shape and dtype, a bfloat16 or float32 norm_weight [K], K % 512 == 0, K <= {MAX_K[1]}, "
            f"N % {ROWS} == 0)"
        )
    eps_array = jnp.full((1,), eps, jnp.float32)
    activation = (x.reshape(1, k), delta.reshape(1, k), norm_weight, eps_array)
    out, h = _launch(config(n, k), w, *activation, out_dtype=out_dtype, norm_dtype=norm_weight.dtype)
    return out.astype(out_dtype).reshape(*lead, n), h.reshape(x.shape)


def _launch(
    cfg: GemvConfig, w: MXArray, *activation: jax.Array, out_dtype: jnp.dtype, norm_dtype: jnp.dtype | None = None
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """One launch of ``cfg``'s kernel on ``w`` and the ``activation`` operands (its rows first): the product
    ``[m, N]`` in bf16 or float32 (the kernel's own output dtype nearest ``out_dtype``), and with ``norm_dtype`` (the
    add-and-norm kernel's norm weight's) the residual sum ``[1, K]`` in the rows' dtype as well."""
    n, k = w.shape
    rows = activation[0]
    kernel_dtype = jnp.bfloat16 if jnp.dtype(out_dtype) == jnp.bfloat16 else jnp.float32
    name = cfg.kernel(kernel_dtype, x_dtype=rows.dtype, norm_dtype=norm_dtype)
    return ptx_launch.launch(
        jax.lax.bitcast_convert_type(w.data, jnp.uint8),
        w.scale,
        *activation,
        jnp.array([cfg.m, n, k], jnp.int32),
        name=name,
        ptx=entry_ptx(_ptx(), name),
        grid=(cfg.grid(n, _sms()), 1),
        warps=cfg.threads // 32,
        out_shape=(cfg.m, n),
        out_dtype=kernel_dtype,
        extra_outputs=(((1, k), rows.dtype),) if norm_dtype is not None else (),
    )


@contextlib.contextmanager
def _thread_locale_kept() -> Iterator[None]:
    """Put back the calling thread's C locale afterwards: NVRTC 12.1's compile leaves the thread on its own ``C``
    locale (``uselocale``), after which Python opens text files as ASCII by default (glibc)."""
    libc = ctypes.CDLL(None)
    libc.uselocale.restype = ctypes.c_void_p
    libc.uselocale.argtypes = [ctypes.c_void_p]
    before = libc.uselocale(None)  # the thread's locale, or LC_GLOBAL_LOCALE
    try:
        yield
    finally:
        libc.uselocale(before)


@functools.cache
def _nvrtc() -> ctypes.CDLL:
    """NVRTC 12.1's library from the ``nvidia-cuda-nvrtc-cu12==12.1.105`` wheel (the ``test`` extra), called through
    ctypes: ``cuda-bindings`` 12, the Python binding for it, cannot be installed beside PyPI's CUDA torch 2.13, which
    requires ``cuda-bindings`` 13 and NVRTC 13 (Python 3.12 and later, where no CPU build of torch 2.13 is on PyPI)."""
    try:
        import nvidia.cuda_nvrtc
    except ImportError as e:
        raise RuntimeError(f"NVRTC 12.1 is not installed ({e}): pip install nvidia-cuda-nvrtc-cu12==12.1.105") from e
    lib = ctypes.CDLL(str(Path(list(nvidia.cuda_nvrtc.__path__)[0]) / "lib" / "libnvrtc.so.12"))
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def nvrtc_version() -> tuple[int, int]:
    """The (major, minor) version of the NVRTC that :func:`build_ptx` compiles with."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _nvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def build_ptx(source: Path = SOURCE, defines: tuple[str, ...] = ()) -> str:
    """``source`` (no includes) compiled to PTX for compute_90 by NVRTC 12.1 (:func:`_nvrtc`; ``gemv.ptx`` was built
    with it, and its PTX ISA 8.1 every CUDA 12 driver reads; a test rebuilds it byte for byte)."""
    nvrtc = _nvrtc()

    def check(status: int) -> None:
        if status != 0:
            raise RuntimeError(f"NVRTC: {nvrtc.nvrtcGetErrorString(status).decode()}")

    prog = ctypes.c_void_p()
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.read_bytes(), source.name.encode(), 0, None, None))
    try:
        opts = [b"--gpu-architecture=compute_90", b"-std=c++17", *(f"-D{d}".encode() for d in defines)]
        with _thread_locale_kept():
            status = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        if status != 0:
            check(nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size)))
            log = ctypes.create_string_buffer(size.value)
            check(nvrtc.nvrtcGetProgramLog(prog, log))
            raise RuntimeError(f"NVRTC could not compile {source.name}:\n{log.value.decode(errors='replace')}")
        check(nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)))
        ptx = ctypes.create_string_buffer(size.value)
        check(nvrtc.nvrtcGetPTX(prog, ptx))
        return ptx.value.decode()
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
