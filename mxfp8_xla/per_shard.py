"""MXFP8 work on operands whose types carry shardings over ``Explicit`` mesh axes: each device runs it on its own
shards inside ``shard_map``.

On Explicit axes (``jax.make_mesh``'s default) JAX carries shardings through ``jnp`` but not into a Pallas kernel or
a custom call: the hopper backend's kernels refuse a sharded operand ("sharded ref ... can only be sliced along
unsharded axes"). MXFP8 work is local to a device as long as it holds whole 32-element blocks of K: quantization
always, and a product too, where the rows (x's leading axes) and N split freely and a K split leaves partial sums,
added in float32 with ``psum``. The shapes the backends see are the local ones. ``shard_map`` here is also the one
:mod:`mxfp8_xla.sharding` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mxfp8_xla import varying_axes
from mxfp8_xla.mxarray import MXArray
from mxfp8_xla.numerics import BLOCK_SIZE

Spec = tuple[Any, ...]
"""A ``PartitionSpec``'s entries, one per axis: ``None``, a mesh axis name, or a tuple of them."""


def shard_map(
    f: Callable,
    *,
    mesh: Mesh | jax.sharding.AbstractMesh,
    in_specs: Any,
    out_specs: Any,
    axis_names: frozenset[str] = frozenset(),
) -> Callable:
    """``jax.shard_map`` (manual over ``axis_names``, all axes if empty) with ``check_vma=False``, as every MXFP8
    shard_map here has.

    The backends type their outputs for the check (:mod:`mxfp8_xla.varying_axes`, so they run inside a user's
    shard_map that checks), but jax's Pallas interpreter, which runs the hopper backend's kernels in the CPU tests,
    fails under it (jax 0.10.2: it evaluates a kernel's untyped body on varying blocks, so an op that mixes a block
    with a constant raises; docs/upstream.md). The specs stay the
    contract: each function here states what varies along which axis.
    """
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=axis_names, check_vma=False)


def spec_of(a: Any) -> Spec:
    """``a``'s partition spec as its type carries it, one entry per axis (all ``None`` off Explicit axes)."""
    spec = tuple(jax.typeof(a).sharding.spec)
    return spec + (None,) * (jnp.ndim(a) - len(spec))


def explicit_sharding(a: Any) -> NamedSharding | None:
    """``a``'s sharding as its type carries it, where a mesh is set: the ``out_sharding`` a gradient's product must
    produce on ``Explicit`` mesh axes (where a sharded contraction is otherwise ambiguous), as JAX's own dot
    transpose passes it. ``None`` without a mesh."""
    sharding = jax.typeof(a).sharding
    return None if sharding.mesh.empty else sharding


def is_split(*arrays: Any) -> bool:
    """Whether any of ``arrays``' types splits an axis over an Explicit mesh axis."""
    return any(entry is not None for a in arrays for entry in spec_of(a))


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _mesh(*arrays: Any) -> Mesh | jax.sharding.AbstractMesh:
    """The mesh the first split array is split over: a concrete array's own (its devices, which a reshard outside a
    mesh context needs), else its type's."""
    a = next(a for a in arrays if is_split(a))
    if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and isinstance(a.sharding, NamedSharding):
        return a.sharding.mesh
    return jax.typeof(a).sharding.mesh


def local_shape(a: Any) -> tuple[int, ...]:
    """The shape of one device's shard of ``a``, as its type splits it."""
    mesh = _mesh(a) if is_split(a) else None
    return tuple(
        size // math.prod(mesh.shape[axis] for axis in _axes(entry)) if mesh else size
        for size, entry in zip(jnp.shape(a), spec_of(a), strict=True)
    )


def _per_device(f: Callable, mesh: Mesh | jax.sharding.AbstractMesh, in_specs: Any, out_specs: Any) -> Callable:
    """``f`` on each device's shards: manual over the mesh's Explicit axes (all of them unless some are Auto, which
    stay XLA's: a weight split over one is not gathered); jitted, since eager ``vmap`` of a bare ``shard_map``
    refers its ``out_specs`` to axes it has not bound (jax 0.10.2). Inside a user's ``shard_map`` over other axes
    the results vary over every axis the arguments vary over (:mod:`mxfp8_xla.varying_axes`): the unchecked
    ``shard_map`` would type them as varying over none."""
    explicit = frozenset(a for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True) if t == AxisType.Explicit)
    manual = frozenset() if explicit == frozenset(mesh.axis_names) else explicit  # frozenset(): all of them
    mapped = jax.jit(shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=manual))
    return lambda *args: varying_axes.cast_to(mapped(*args), varying_axes.of(*args))


def _check_whole_blocks(label: str, k: int, k_axes: tuple[str, ...], mesh: Mesh | jax.sharding.AbstractMesh) -> None:
    shards = math.prod(mesh.shape[a] for a in k_axes)
    if k % shards or (k // shards) % BLOCK_SIZE:
        raise ValueError(
            f"{label}: K={k} is split over mesh axes {k_axes} into {shards} shards of {k / shards:g} elements, not a "
            f"whole number of {BLOCK_SIZE}-element MXFP8 blocks; a block's shared scale cannot be split"
        )


def _reshard(a: jax.Array, mesh: Mesh | jax.sharding.AbstractMesh, spec: P) -> jax.Array:
    """``a`` split as ``spec`` over ``mesh``."""
    return jax.sharding.reshard(a, NamedSharding(mesh, spec))


def quantize(fn: Callable[[jax.Array], MXArray], a: jax.Array, axis: int, label: str) -> MXArray:
    """``fn(a)``, an MXFP8 quantization of ``a`` along ``axis`` (moved last, as ``mxfp8_xla.quantize`` does) that
    may only take unsplit arrays: where ``a``'s type splits it, run on each device's shard (each holds whole blocks,
    so the shards' results are the slices of the whole's)."""
    if not is_split(a):
        return fn(a)
    axis = axis % a.ndim
    spec = spec_of(a)
    mesh = _mesh(a)
    _check_whole_blocks(label, a.shape[axis], _axes(spec[axis]), mesh)
    moved = P(*spec[:axis], *spec[axis + 1 :], spec[axis])

    def local(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        q = fn(a)
        return q.data, q.scale

    data, scale = _per_device(local, mesh, P(*spec), (moved, moved))(a)
    return MXArray(data, scale)


def product(
    run: Callable[[jax.Array | MXArray, Any, bool], jax.Array],
    x: jax.Array | MXArray,
    w: Any,
    *,
    out_dtype: jnp.dtype,
    out_sharding: P | NamedSharding | None,
    label: str,
) -> jax.Array:
    """``run(x_shard, w_shard, partial)`` on each device's shards of ``x [..., K]`` (an array or an MXArray) and
    the weight ``w [N, K]`` (an MXArray, or an unsplit ``FlashInferWeight``), as their types split them: the output
    ``[..., N]`` is split as x's rows and w's N are.

    Where K is split, ``partial`` is true: ``run`` returns partial sums (float32 where its backend writes float32),
    added in float32 with ``psum`` and then cast to ``out_dtype``, and the output is whole along K's mesh axes. An
    operand whose K is whole is split as the other's first (a local slice where it is whole along those axes).
    Where both operands split K, ``out_sharding`` must say how to split the output, as ``jnp.dot`` asks on Explicit
    axes. ``out_sharding``, if given, reshards the output.
    """
    x_parts = [x.data, x.scale] if isinstance(x, MXArray) else [x]
    w_parts, w_tree = jax.tree.flatten(w)
    x_specs = [spec_of(a) for a in x_parts]
    if isinstance(w, MXArray):
        w_specs = [spec_of(a) for a in w_parts]
    elif is_split(*w_parts):
        raise TypeError(
            f"{label}: a {type(w).__name__}'s swizzled scales cannot be split over devices; split an MXArray"
        )
    else:
        w_specs = [(None, None)]  # the data's; its 1-D scales stay whole
    x_k, w_k = {s[-1] for s in x_specs}, {s[1] for s in w_specs}
    rows, n = {s[:-1] for s in x_specs}, {s[0] for s in w_specs}
    if max(map(len, (x_k, w_k, rows, n))) > 1 or (None not in x_k | w_k and x_k != w_k):
        raise ValueError(
            f"{label}: x{' and its scales' if len(x_specs) > 1 else ''} {[P(*s) for s in x_specs]} and the weight "
            f"and its scales {[P(*s) for s in w_specs]} must split K (and K/32) over the same mesh axes (or one of "
            "them not at all), and each operand's data and scales alike; reshard them first"
        )
    (x_k,), (w_k,), (rows,), (n,) = x_k, w_k, rows, n
    both_split, k = x_k is not None and w_k is not None, w_k if x_k is None else x_k
    k_axes = _axes(k)
    used = [axis for entry in (*rows, n) for axis in _axes(entry)]
    if len(used) != len(set(used)) or set(used) & set(k_axes):
        raise ValueError(
            f"{label}: a mesh axis splits two of x's rows {P(*rows)}, the weight's N ({n!r}) and K ({k!r}); "
            "reshard them first"
        )
    mesh = _mesh(*x_parts, *w_parts)
    _check_whole_blocks(label, x.shape[-1], k_axes, mesh)
    if k_axes and not isinstance(w, MXArray):
        raise TypeError(f"{label}: x splits K over {k_axes}, which a {type(w).__name__} cannot; use an MXArray weight")
    if both_split and out_sharding is None:
        raise ValueError(
            f"{label}: x and the weight both split K over mesh axes {k_axes}, so every device holds a partial sum "
            f"and the output's sharding is ambiguous; pass out_sharding (e.g. P{(*rows, n)!r} for the sum, whole "
            f"along {k_axes}), as jnp.dot asks on Explicit axes"
        )
    if x_k is None and k_axes:
        x_parts = [_reshard(a, mesh, P(*rows, k)) for a in x_parts]
    if w_k is None and k_axes:
        w_parts = [_reshard(a, mesh, P(n, k)) for a in w_parts]

    def local(*parts: jax.Array) -> jax.Array:
        xs = MXArray(*parts[: len(x_parts)]) if isinstance(x, MXArray) else parts[0]
        y = run(xs, jax.tree.unflatten(w_tree, parts[len(x_parts) :]), bool(k_axes))
        return jax.lax.psum(y.astype(jnp.float32), k_axes).astype(out_dtype) if k_axes else y

    w_in = [P(n, k)] * len(w_parts) if isinstance(w, MXArray) else [P(*(None,) * jnp.ndim(a)) for a in w_parts]
    in_specs = (*(P(*rows, k) for _ in x_parts), *w_in)
    y = _per_device(local, mesh, in_specs, P(*rows, n))(*x_parts, *w_parts)
    return y if out_sharding is None else jax.sharding.reshard(y, out_sharding)
