"""A PTX kernel launched inside ``jax.jit``, on XLA's stream, through jaxlib's PTX launcher.

jaxlib runs Pallas's Triton kernels (and jax-triton's) through one custom call,
``triton_kernel_call_ffi``, whose payload is a kernel's PTX, name, grid, warps and
shared memory; the CUDA driver JIT-compiles the PTX once per process. :func:`launch`
uses the same call for a kernel of our own. It is a private jaxlib API, called here as
jax's own Pallas Triton lowering calls it in jax 0.10.2 and 0.11.2 (it ran on 0.11.2),
and it needs jaxlib's CUDA plugin.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.extend.core import Primitive

from mxfp8_xla import varying_axes

IMPORT_ERROR: str | None = None
"""Why jax's private modules below do not import here (``None``: they do)."""
try:  # jax's private modules, as its own Pallas Triton lowering uses them: where a jax moves them the package still
    # imports, and the hopper backend is unavailable (``select.backend_problems`` says why)
    from jax._src import dispatch
    from jax._src.core import ShapedArray
    from jax._src.interpreters import mlir
    from jax._src.lib import gpu_triton
    from jax._src.lib.mlir import ir
except ImportError as e:
    dispatch = ShapedArray = mlir = gpu_triton = ir = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"

_launch = Primitive("mxfp8_ptx_kernel")
_launch.multiple_results = True


def launch(
    *operands: jax.Array,
    name: str,
    ptx: str,
    grid: tuple[int, int],
    warps: int,
    out_shape: tuple[int, ...],
    out_dtype: np.dtype,
    smem: int = 0,
    extra_outputs: tuple[tuple[tuple[int, ...], np.dtype], ...] = (),
) -> jax.Array | tuple[jax.Array, ...]:
    """Run kernel ``name`` of ``ptx`` on ``grid`` CTAs of ``warps`` warps with ``smem`` bytes of dynamic shared
    memory; its parameters are pointers to ``operands`` (row-major), then to the output ``out_shape``/``out_dtype``
    and to each ``(shape, dtype)`` of ``extra_outputs``. Returns the output, or all of them if there are extra ones.

    jaxlib's launcher opts a kernel in to more than 48 KB only when ``smem`` alone exceeds 48 KB, and then also sets
    ``CU_FUNC_CACHE_PREFER_SHARED`` (the least L1; 15-20% slower for the tensor-core GEMV, docs/benchmark_log.md,
    eighteenth session). Static plus dynamic shared memory above 48 KB with ``smem`` at most 48 KB fails to launch."""
    outs = _launch.bind(
        *operands,
        name=name,
        ptx=ptx,
        grid=tuple(grid),
        warps=warps,
        outputs=tuple((tuple(shape), np.dtype(dtype)) for shape, dtype in ((out_shape, out_dtype), *extra_outputs)),
        smem=smem,
    )
    outs = varying_axes.cast_to(outs, varying_axes.of(*operands))  # the launch's outputs carry no such type
    return tuple(outs) if extra_outputs else outs[0]


def unavailable() -> str | None:
    """Why no kernel can be launched here (``None``: jaxlib's CUDA plugin is installed)."""
    if IMPORT_ERROR is not None:
        return f"jax {jax.__version__} lacks the private modules behind jaxlib's PTX launcher ({IMPORT_ERROR})"
    if hasattr(gpu_triton, "TritonKernel"):
        return None
    return "jaxlib's CUDA plugin (jax[cuda12]) is not installed"


def traced_launch_params(fn: Callable, *args: Any) -> list[dict]:
    """The parameters (``name``, ``ptx``, ``grid``, ...) of every launch ``fn(*args)`` traces to, nested jaxprs (jit,
    scan, custom_vmap) included."""

    def walk(jaxpr) -> Iterator[dict]:
        for eqn in jaxpr.eqns:
            if eqn.primitive is _launch:
                yield dict(eqn.params)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                        yield from walk(getattr(sub, "jaxpr", sub))

    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def traced_launches(fn: Callable, *args: Any) -> list[str]:
    """The kernel names of every launch ``fn(*args)`` traces to (:func:`traced_launch_params`)."""
    return [params["name"] for params in traced_launch_params(fn, *args)]


@_launch.def_abstract_eval
def _abstract_eval(*avals, name, ptx, grid, warps, outputs, smem):
    del avals, name, ptx, grid, warps, smem
    return [ShapedArray(shape, dtype) for shape, dtype in outputs]


def _lowering(ctx, *args, name, ptx, grid, warps, outputs, smem):
    del outputs  # in ctx.avals_out
    if (why := unavailable()) is not None:
        raise RuntimeError(f"cannot launch the CUDA kernel {name}: {why}")
    # (name, num_warps, num_ctas, shared_mem_bytes, ptx, ttir, compute_capability); above 48 KB of shared memory
    # jaxlib raises the kernel's dynamic limit itself
    kernel = gpu_triton.TritonKernel(name, warps, 1, smem, ptx, "", 90)
    params = [gpu_triton.create_array_parameter(0, 16)] * (len(args) + len(ctx.avals_out))
    call = gpu_triton.TritonKernelCall(kernel, grid[0], grid[1], 1, params)
    layout = lambda a: list(reversed(range(len(a.shape))))  # noqa: E731
    return mlir.custom_call(
        call_target_name="triton_kernel_call_ffi",
        result_types=[mlir.aval_to_ir_type(ctx.module_context, a) for a in ctx.avals_out],
        operands=list(args),
        backend_config=dict(
            name=ir.StringAttr.get(name),
            opaque=ir.StringAttr.get(zlib.compress(call.to_proto(name, b""))),
        ),
        operand_layouts=[layout(a) for a in ctx.avals_in],
        result_layouts=[layout(a) for a in ctx.avals_out],
    ).results


if mlir is not None:
    mlir.register_lowering(_launch, _lowering, platform="cuda")
    # Outside jit (an eager call) the launch is compiled alone and run, as jax's own primitives are.
    _launch.def_impl(functools.partial(dispatch.apply_primitive, _launch))
