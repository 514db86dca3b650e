"""MXFP8 work on operands whose types carry shardings over ``Explicit`` mesh axes: each device runs it on its own
shards inside ``shard_map``.

On Explicit axes (``jax.make_mesh``'s default) JAX carries shardings through ``jnp`` but not into a Pallas kernel or
a custom call: the hopper backend's kernels refuse a sharded operand ("sharded ref ... can only be sliced along
unsharded axes"). MXFP8 work is local to a device as long as it holds whole 32-element blocks of K: quantization
always, and a product too, where the rows (x's leading axes) and N split freely and a K split leaves float32 partial
sums, added with ``psum``. The shapes the backends see are the local ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mxfp8_xla.mxarray import MXArray
from mxfp8_xla.numerics import BLOCK_SIZE

Spec = tuple[Any, ...]
"""A ``PartitionSpec``'s entries, one per axis: ``None``, a mesh axis name, or a tuple of them."""


def shard_map(f: Callable, *, mesh: Mesh | jax.sharding.AbstractMesh, in_specs: Any, out_specs: Any) -> Callable:
    """``jax.shard_map`` with ``check_vma=False``, as every MXFP8 shard_map here needs.

    The backends run Pallas kernels (hopper) and custom calls (the DLPack bridge) whose
    output types carry no varying-manual-axes information; with the check on, JAX 0.11
    refuses the Pallas outputs at trace time (measured on an H100). The specs stay the
    contract: each function here states what varies along which axis.
    """
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def spec_of(a: Any) -> Spec:
    """``a``'s partition spec as its type carries it, one entry per axis (all ``None`` off Explicit axes)."""
    spec = tuple(jax.typeof(a).sharding.spec)
    return spec + (None,) * (jnp.ndim(a) - len(spec))


def is_split(*arrays: Any) -> bool:
    """Whether any of ``arrays``' types splits an axis over an Explicit mesh axis."""
    return any(entry is not None for a in arrays for entry in spec_of(a))


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _mesh(*arrays: Any) -> jax.sharding.AbstractMesh:
    return next(jax.typeof(a).sharding.mesh for a in arrays if is_split(a))


def _check_whole_blocks(label: str, k: int, k_axes: tuple[str, ...], mesh: jax.sharding.AbstractMesh) -> None:
    shards = math.prod(mesh.shape[a] for a in k_axes)
    if k % shards or (k // shards) % BLOCK_SIZE:
        raise ValueError(
            f"{label}: K={k} is split over mesh axes {k_axes} ({shards} shards), so a device's K range ({k}/{shards}) "
            f"is not a whole number of {BLOCK_SIZE}-element MXFP8 blocks; a block's shared scale cannot be split"
        )


def _reshard(a: jax.Array, mesh: jax.sharding.AbstractMesh, spec: P) -> jax.Array:
    """``a`` split as ``spec`` over ``mesh`` (with or without a mesh context)."""
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

    data, scale = shard_map(local, mesh=mesh, in_specs=P(*spec), out_specs=(moved, moved))(a)
    return MXArray(data, scale)


def product(
    run: Callable[[jax.Array | MXArray, MXArray, jnp.dtype], jax.Array],
    x: jax.Array | MXArray,
    w: MXArray,
    *,
    out_dtype: jnp.dtype,
    out_sharding: P | NamedSharding | None,
    label: str,
) -> jax.Array:
    """``run(x_shard, w_shard, dtype)`` on each device's shards of ``x [..., K]`` (an array or an MXArray) and
    ``w [N, K]``, as their types split them: the output ``[..., N]`` is split as x's rows and w's N are.

    Where K is split, ``run`` returns float32 partial sums, added with ``psum`` and then cast to ``out_dtype``, and
    the output is whole along K's mesh axes. An operand whose K is whole is split as the other's first (a local
    slice where it is whole along those axes). Where both operands split K, ``out_sharding`` must say how to split
    the output, as ``jnp.dot`` asks on Explicit axes. ``out_sharding``, if given, reshards the output.
    """
    x_parts = [x.data, x.scale] if isinstance(x, MXArray) else [x]
    w_parts = [w.data, w.scale]
    x_specs, w_specs = [spec_of(a) for a in x_parts], [spec_of(a) for a in w_parts]
    x_k, w_k = {s[-1] for s in x_specs}, {s[1] for s in w_specs}
    rows, n = {s[:-1] for s in x_specs}, {s[0] for s in w_specs}
    if max(map(len, (x_k, w_k, rows, n))) > 1 or (None not in x_k | w_k and x_k != w_k):
        raise ValueError(
            f"{label}: x {' and its scales ' if len(x_specs) > 1 else ''}{[P(*s) for s in x_specs]} and the weight "
            f"and its scales {[P(*s) for s in w_specs]} must split K (and K/32) over the same mesh axes (or one of "
            "them not at all), and each operand's data and scales alike; reshard them first"
        )
    (x_k,), (w_k,), (rows,), (n,) = x_k, w_k, rows, n
    both_split, k = x_k is not None and w_k is not None, w_k if x_k is None else x_k
    mesh = _mesh(*x_parts, *w_parts)
    if x_k is None and k is not None:
        x_parts = [_reshard(a, mesh, P(*rows, k)) for a in x_parts]
    if w_k is None and k is not None:
        w_parts = [_reshard(a, mesh, P(n, k)) for a in w_parts]
    k_axes = _axes(k)
    used = [axis for entry in (*rows, n) for axis in _axes(entry)]
    if len(used) != len(set(used)) or set(used) & set(k_axes):
        raise ValueError(
            f"{label}: a mesh axis splits two of x's rows {P(*rows)}, the weight's N ({n!r}) and K ({k!r}); "
            "reshard them first"
        )
    _check_whole_blocks(label, w.shape[1], k_axes, mesh)
    if both_split and out_sharding is None:
        raise ValueError(
            f"{label}: x and the weight both split K over mesh axes {k_axes}, so every device holds a partial sum "
            f"and the output's sharding is ambiguous; pass out_sharding (e.g. P{(*rows, n)!r} for the sum, whole "
            f"along {k_axes}), as jnp.dot asks on Explicit axes"
        )

    def local(*parts: jax.Array) -> jax.Array:
        xs = MXArray(*parts[:2]) if isinstance(x, MXArray) else parts[0]
        y = run(xs, MXArray(*parts[-2:]), jnp.dtype(jnp.float32) if k_axes else out_dtype)
        return jax.lax.psum(y, k_axes).astype(out_dtype) if k_axes else y

    in_specs = tuple(P(*rows, k) for _ in x_parts) + tuple(P(n, k) for _ in w_parts)
    y = shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(*rows, n))(*x_parts, *w_parts)
    return y if out_sharding is None else jax.sharding.reshard(y, out_sharding)
