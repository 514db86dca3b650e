"""Zero-copy bridge from ``jax.jit`` to PyTorch: :func:`torch_callback`.

Built on :func:`jax.experimental.buffer_callback.buffer_callback`. Inside a
jitted computation XLA calls back into Python with its own device buffers; the
bridge wraps them with ``torch.from_dlpack`` (no copies), runs ``fn`` on XLA's
CUDA stream (``torch.cuda.ExternalStream(ctx.stream)``), and writes the results
into XLA's output buffers in place. On CPU the same code path runs with torch
CPU tensors, so CPU CI exercises it end to end.

When Python runs
----------------
* **Trace** (``jax.jit`` tracing / lowering): :func:`torch_callback` itself runs
  (shape checks, building the custom call). ``fn`` does not run.
* **Each execution, without command buffers** (CPU always; GPU with
  ``command_buffer_compatible=False``): the Python callback runs on every call.
  On GPU it only *enqueues* torch kernels on XLA's stream and returns; on CPU it
  computes synchronously.
* **With command buffers** (GPU, ``command_buffer_compatible=True``, the default
  there): XLA records the torch kernels into its CUDA graph and replays them
  without entering Python. Python runs when XLA (re)records the command buffer:
  at the first execution (XLA's warm-up run executes the thunks normally) and
  at capture, and again whenever XLA re-records because the addresses of the
  buffers it touches changed (e.g. new input/output buffers). Between
  recordings, replays reuse the *recorded* kernels and their arguments: ``fn``
  must be a pure function of its buffers (no Python-side state that changes per
  call, no host synchronization, no ``.item()``).

  Anything ``fn`` allocates (torch caching allocator blocks), compiles, or
  autotunes must be warmed up *outside* capture: ``cudaMalloc`` and kernel
  loading are illegal while a stream is capturing. XLA's first execution is a
  non-captured warm-up for the same shapes; libraries with global workspaces or
  tuners (FlashInfer) should be warmed up explicitly before the first jitted
  call (see :func:`mxfp8_xla.backends.flashinfer.warmup`). Prefer ``fn`` that
  writes straight into the outputs (``pass_out=True``) and allocates nothing.
  Temporary torch memory released after capture is reused stream-ordered on
  XLA's stream, which is safe as long as that memory is only used on XLA's
  stream and torch's cache is not emptied (no ``torch.cuda.empty_cache()``).

dtypes
------
float32, bfloat16, float16, integer and bool buffers go through DLPack as they
are. 8-bit float buffers (float8_e4m3fn, float8_e5m2, ...) are passed through
the custom call as ``uint8`` (a free ``bitcast_convert_type`` in XLA) and
re-typed with ``tensor.view(torch.float8_e4m3fn)`` on the torch side, because
not every torch/jaxlib pair agrees on DLPack's float8 codes. Pass
``fp8_via_uint8=False`` to hand them over natively.

Batching and autodiff
---------------------
``vmap_method="flatten"`` (used by the matmul backends) treats axis 0 of the
inputs listed in ``row_argnums`` and of every output as a shared *row* axis:
under ``jax.vmap`` the mapped axis is merged into that row axis (``[B, M, ...]``
-> ``[B*M, ...]``, a free reshape), ``fn`` runs once on the flattened buffers,
and the outputs are split back to ``[B, M, ...]``. Row inputs that are not
mapped are broadcast. If an input *outside* ``row_argnums`` is mapped (e.g. a
batch of weights) the bridge falls back to ``"sequential"`` (``lax.map``, one
call per batch element). ``"sequential"``, ``"expand_dims"`` and
``"broadcast_all"`` behave as documented for :func:`jax.pure_callback`.

The bridge is not differentiable: gradients of MXFP8 layers come from the
``custom_vjp`` rules of ``mxfp8_matmul`` and ``mxfp8_linear_ste``. Differentiating through :func:`torch_callback` raises
``TypeError`` naming the callback.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.experimental.buffer_callback import buffer_callback

from mxfp8_xla import varying_axes

logger = logging.getLogger("mxfp8_xla.interop")

__all__ = [
    "CALL_COUNTS",
    "VMAP_METHODS",
    "rowwise_vmap",
    "torch_callback",
    "torch_dtype",
]

VMAP_METHODS = ("flatten", "sequential", "expand_dims", "broadcast_all")

CALL_COUNTS: collections.Counter[str] = collections.Counter()
"""How many times each named callback entered Python (for tests and benchmarks)."""

COMMAND_BUFFER_ENV = "MXFP8_XLA_COMMAND_BUFFERS"
"""Set to ``0`` to turn command buffers off for bridged calls whose
``command_buffer_compatible`` is left at ``None``."""

# jnp dtype name -> torch dtype attribute name, for the dtypes the bridge carries.
_TORCH_DTYPE_NAMES = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
    "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz",
    "float8_e8m0fnu": "float8_e8m0fnu",
}


def _is_float8(dtype: Any) -> bool:
    dtype = np.dtype(dtype)
    return dtype.itemsize == 1 and jnp.issubdtype(dtype, jnp.floating)


def torch_dtype(dtype: Any) -> Any:
    """The ``torch.dtype`` matching a JAX/NumPy dtype; ``TypeError`` if torch has none."""
    import torch

    name = np.dtype(dtype).name
    attr = _TORCH_DTYPE_NAMES.get(name)
    if attr is None or not hasattr(torch, attr):
        raise TypeError(f"torch_callback: dtype {name} has no torch counterpart in torch {torch.__version__}")
    return getattr(torch, attr)


# --------------------------------------------------------------------------- vmap


def rowwise_vmap(fun: Callable[..., Any], row_argnums: Sequence[int]) -> Callable[..., Any]:
    """Make ``fun`` batch by flattening ``vmap`` axes into axis 0 of its row arguments.

    ``fun(*arrays)`` must treat axis 0 of ``arrays[i]`` for ``i`` in ``row_argnums``
    and axis 0 of every output as one shared row axis (rows computed
    independently). Under ``jax.vmap`` with axis size ``B``: mapped row arguments
    ``[B, M, ...]`` become ``[B*M, ...]``, unmapped row arguments are broadcast
    first, ``fun`` runs once, and outputs ``[B*M, ...]`` come back as
    ``[B, M, ...]``. If an argument outside ``row_argnums`` is mapped, the
    batch runs sequentially with ``lax.map`` (logged as a warning when traced). Nested ``vmap`` composes.
    """
    rows = frozenset(int(i) for i in row_argnums)

    @custom_vmap
    def batched(*args):
        return fun(*args)

    @batched.def_vmap
    def _rule(axis_size, in_batched, *args):
        mapped = {i for i, b in enumerate(in_batched) if b}
        if mapped <= rows:
            flat = []
            for i, (a, b) in enumerate(zip(args, in_batched, strict=True)):
                if i in rows:
                    if not b:
                        a = jnp.broadcast_to(a, (axis_size, *a.shape))
                    if a.ndim < 2:
                        raise ValueError(f"rowwise_vmap: row argument {i} has shape {a.shape[1:]} (no row axis)")
                    m = a.shape[1]  # rows per element, shared by every row argument and output
                    a = a.reshape((axis_size * m, *a.shape[2:]))
                flat.append(a)
            out = batched(*flat)
            out = jax.tree.map(lambda o: o.reshape((axis_size, m, *o.shape[1:])), out)
        else:
            logger.warning(
                "rowwise_vmap(%s): vmap maps argument(s) %s outside the row arguments %s, so the batch of %d runs "
                "one call per element (jax.lax.map)",
                getattr(fun, "__name__", "fun"),
                sorted(mapped - rows),
                sorted(rows),
                axis_size,
            )

            def one(mapped_args):
                it = iter(mapped_args)
                return batched(*[next(it) if b else a for a, b in zip(args, in_batched, strict=True)])

            out = jax.lax.map(one, [a for a, b in zip(args, in_batched, strict=True) if b])
        return out, jax.tree.map(lambda _: True, out)

    return batched


def _no_autodiff(fun: Callable[..., Any], what: str) -> Callable[..., Any]:
    @jax.custom_jvp
    def wrapped(*args):
        return fun(*args)

    @wrapped.defjvp
    def _jvp(primals, tangents):
        raise TypeError(
            f"{what} is not differentiable: the torch bridge has no autodiff rule. "
            "Gradients of MXFP8 layers come from mxfp8_matmul's and the STE's custom_vjp; wrap your "
            "own bridged functions in jax.custom_vjp, or stop_gradient their inputs."
        )

    return wrapped


# --------------------------------------------------------------------------- torch side


@functools.lru_cache(maxsize=64)
def _external_stream(stream_ptr: int, device_index: int) -> Any:
    import torch

    return torch.cuda.ExternalStream(stream_ptr, device=torch.device("cuda", device_index))


def _wrap(buffer: Any, torch_view_dtype: Any | None) -> Any:
    import torch

    t = torch.from_dlpack(buffer)
    if torch_view_dtype is not None:
        t = t.view(torch_view_dtype)
    return t


def _command_buffer_default() -> bool:
    return os.environ.get(COMMAND_BUFFER_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


# --------------------------------------------------------------------------- public API


def torch_callback(
    fn: Callable[..., Any],
    result_shape_dtypes: Any,
    *args: Any,
    command_buffer_compatible: bool | None = None,
    pass_out: bool = False,
    vmap_method: str | None = None,
    row_argnums: Sequence[int] | None = None,
    fp8_via_uint8: bool = True,
    name: str | None = None,
) -> Any:
    """Run the PyTorch function ``fn`` on XLA's buffers inside ``jax.jit``; no copies.

    Args:
      fn: ``fn(*tensors)`` returning a tensor (or a pytree of tensors matching
        ``result_shape_dtypes``) that is copied into XLA's output buffers; or, with
        ``pass_out=True``, ``fn(*tensors, out=outs)`` writing into ``outs`` (a
        tensor, or a pytree like ``result_shape_dtypes``); its return value is ignored.
        Input tensors alias XLA's buffers: never write to them.
      result_shape_dtypes: a ``jax.ShapeDtypeStruct`` (or anything with ``shape``
        and ``dtype``), or a pytree of them.
      *args: JAX arrays (dense, row-major on the torch side).
      command_buffer_compatible: record the torch kernels into XLA's CUDA graph.
        ``None`` means on, unless ``MXFP8_XLA_COMMAND_BUFFERS=0``; it has no
        effect on CPU. See the module docstring for what ``fn`` must then obey.
      pass_out: call ``fn(..., out=outs)`` to write outputs in place.
      vmap_method: ``"flatten"`` (default when ``row_argnums`` is given),
        ``"sequential"`` (default otherwise), ``"expand_dims"`` or
        ``"broadcast_all"``. See the module docstring.
      row_argnums: inputs whose axis 0 is the row axis shared with every output
        (needed for ``"flatten"``).
      fp8_via_uint8: carry 8-bit float buffers as ``uint8`` across the custom call
        and re-type them in torch (default; see module docstring).
      name: label for error messages and :data:`CALL_COUNTS`.

    Returns:
      JAX arrays shaped like ``result_shape_dtypes``. Inside a ``jax.shard_map`` that checks varying axes (its
      default), each is typed as varying over every mesh axis any of ``args`` varies over
      (:mod:`mxfp8_xla.varying_axes`).
    """
    label = name or getattr(fn, "__name__", "torch_callback")
    out_specs, out_tree = jax.tree.flatten(result_shape_dtypes)
    if not out_specs:
        raise ValueError(f"torch_callback({label}): result_shape_dtypes has no outputs")
    out_specs = [jax.ShapeDtypeStruct(tuple(s.shape), np.dtype(s.dtype)) for s in out_specs]
    args = tuple(jnp.asarray(a) for a in args)

    if vmap_method is None:
        vmap_method = "flatten" if row_argnums is not None else "sequential"
    if vmap_method not in VMAP_METHODS:
        raise ValueError(f"torch_callback({label}): vmap_method must be one of {VMAP_METHODS}, got {vmap_method!r}")
    if vmap_method == "flatten":
        if row_argnums is None:
            raise ValueError(f"torch_callback({label}): vmap_method='flatten' needs row_argnums")
        row_argnums = tuple(int(i) for i in row_argnums)
        for i in row_argnums:
            if not 0 <= i < len(args) or args[i].ndim == 0:
                raise ValueError(f"torch_callback({label}): row_argnums entry {i} must name an input with a row axis")
        rows = {args[i].shape[0] for i in row_argnums} | {s.shape[0] if s.shape else None for s in out_specs}
        if len(rows) != 1:
            raise ValueError(
                f"torch_callback({label}): vmap_method='flatten' needs the same axis-0 length in "
                f"row inputs {[args[i].shape for i in row_argnums]} and outputs "
                f"{[s.shape for s in out_specs]}"
            )
    if command_buffer_compatible is None:
        command_buffer_compatible = _command_buffer_default()

    # Per-input/output: (dtype that crosses the custom call, torch dtype to view as).
    def carrier(dtype: np.dtype) -> tuple[np.dtype, Any]:
        if fp8_via_uint8 and _is_float8(dtype):
            return np.dtype(np.uint8), dtype
        return dtype, None

    def call(*arrays: jax.Array) -> Any:
        # Shapes here may be the flattened (vmapped) ones; outputs follow the rows.
        if vmap_method == "flatten":
            m = arrays[row_argnums[0]].shape[0]
            specs = [jax.ShapeDtypeStruct((m, *s.shape[1:]), s.dtype) for s in out_specs]
        else:
            specs = out_specs
        in_carriers = [carrier(np.dtype(a.dtype)) for a in arrays]
        out_carriers = [carrier(s.dtype) for s in specs]
        in_views = [None if v is None else torch_dtype(v) for _, v in in_carriers]
        out_views = [None if v is None else torch_dtype(v) for _, v in out_carriers]
        for dtype in [a.dtype for a in arrays] + [s.dtype for s in specs]:
            torch_dtype(dtype)  # fail at trace time on dtypes torch lacks
        carried = [
            jax.lax.bitcast_convert_type(a, c) if c != a.dtype else a
            for a, (c, _) in zip(arrays, in_carriers, strict=True)
        ]
        carried_specs = [jax.ShapeDtypeStruct(s.shape, c) for s, (c, _) in zip(specs, out_carriers, strict=True)]

        def bridge(ctx: Any, outs: Sequence[Any], *ins: Any) -> None:
            CALL_COUNTS[label] += 1
            in_t = [_wrap(b, v) for b, v in zip(ins, in_views, strict=True)]
            out_t = [_wrap(b, v) for b, v in zip(outs, out_views, strict=True)]
            device = out_t[0].device
            if device.type == "cuda":
                import torch

                stream = _external_stream(int(ctx.stream), device.index or 0)
                with torch.cuda.stream(stream):
                    _run(fn, in_t, out_t, out_tree, pass_out, label)
            else:
                _run(fn, in_t, out_t, out_tree, pass_out, label)

        results = buffer_callback(
            bridge,
            carried_specs,
            vmap_method=None if vmap_method in ("flatten",) else vmap_method,
            command_buffer_compatible=bool(command_buffer_compatible),
        )(*carried)
        results = varying_axes.cast_to(results, varying_axes.of(*carried))  # a callback's results carry no such type
        return [
            jax.lax.bitcast_convert_type(r, s.dtype) if r.dtype != s.dtype else r
            for r, s in zip(results, specs, strict=True)
        ]

    if vmap_method == "flatten":
        call = rowwise_vmap(call, row_argnums)
    call = _no_autodiff(call, f"torch_callback({label})")
    flat_out = call(*args)
    return jax.tree.unflatten(out_tree, flat_out)


def _run(fn: Callable[..., Any], in_t: list[Any], out_t: list[Any], out_tree: Any, pass_out: bool, label: str) -> None:
    if pass_out:
        fn(*in_t, out=jax.tree.unflatten(out_tree, out_t))  # return value ignored
        return
    produced = fn(*in_t)
    leaves = jax.tree.leaves(produced)  # torch tensors are pytree leaves
    if len(leaves) != len(out_t):
        raise ValueError(f"torch_callback({label}): fn returned {len(leaves)} tensors, expected {len(out_t)}")
    for i, (r, o) in enumerate(zip(leaves, out_t, strict=True)):
        if tuple(r.shape) != tuple(o.shape) or r.dtype != o.dtype:
            raise ValueError(
                f"torch_callback({label}): output {i} is {r.dtype}{list(r.shape)}, "
                f"result_shape_dtypes says {o.dtype}{list(o.shape)}"
            )
        o.copy_(r)
