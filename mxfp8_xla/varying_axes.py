"""Varying manual axes: the types that ``jax.shard_map``'s default ``check_vma=True`` gives values inside it.

There each value's type says over which mesh axes it differs from device to device, and JAX checks that no value
typed alike on every device is in fact different (an ``out_specs=P()`` on a per-device result would otherwise
silently return one device's). ``jnp`` ops give their result the union of their operands' axes and cast operands up
to it; their transposes sum a cotangent over the axes its primal does not vary on. What JAX cannot see into does
neither: a Pallas kernel needs its output type given, a custom call or a buffer callback returns a value typed alike
on every device, and a ``custom_vjp``'s rule must return each cotangent typed as its primal. The backends and rules
here use these functions for that. Outside a checking ``shard_map`` every value varies over no axis, and they change
nothing.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
from jax.sharding import ManualAxisType

T = TypeVar("T")

__all__ = ["cast_to", "match", "of", "struct"]


def of(*trees: Any) -> frozenset[str]:
    """The mesh axes over which any array leaf of ``trees`` varies (empty outside a checking ``shard_map``)."""
    axes: frozenset[str] = frozenset()
    for leaf in jax.tree.leaves(trees):
        axes |= jax.typeof(leaf).manual_axis_type.varying
    return axes


def struct(shape: tuple[int, ...], dtype: Any, *operands: Any) -> jax.ShapeDtypeStruct:
    """The type of a kernel's output ``shape``/``dtype`` computed from ``operands``: varying where any of them does."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=ManualAxisType(varying=of(*operands)))


def cast_to(tree: T, axes: frozenset[str]) -> T:
    """``tree`` with every leaf typed as varying over ``axes`` too (``jax.lax.pcast``; its transpose sums over them)."""

    def cast(leaf: jax.Array) -> jax.Array:
        missing = tuple(sorted(axes - of(leaf)))
        return jax.lax.pcast(leaf, missing, to="varying") if missing else leaf

    return jax.tree.map(cast, tree)


def match(*trees: Any) -> tuple[Any, ...]:
    """``trees`` each cast to vary over every axis any of them varies over, as ``jnp`` casts an op's operands."""
    axes = of(*trees)
    return tuple(cast_to(tree, axes) for tree in trees)
