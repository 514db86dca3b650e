"""Tensor-parallel MXFP8 matmuls under ``jax.sharding``: column- and row-parallel layers.

The Megatron pattern, with MXFP8 block scales kept whole:

* **column-parallel** (split N): a weight ``[N, K]`` and its scales ``[N, K/32]`` are both
  split along N; every device holds all of K, so activations are quantized exactly as
  unsharded; the output stays split along N.
* **row-parallel** (split K): the data is split along K and the scales along K/32, so each
  device holds whole 32-element blocks (its K range must be a multiple of 32, checked before
  any XLA work); each device quantizes its own K slice of the activations, which gives the
  same bytes as unsharded quantization, multiplies in float32 and the partial sums are
  reduced with ``psum``.

A column-parallel layer followed by a row-parallel one needs no communication between them:
the first layer's N split is the second layer's K split (``mlp``).
The backend (``"emulation"``, ``"torch"``, ...) runs per shard inside ``jax.shard_map``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from mxfp8_xla.matmul import shard_product
from mxfp8_xla.mxarray import MXArray, check_float_dtype
from mxfp8_xla.numerics import BLOCK_SIZE
from mxfp8_xla.per_shard import shard_map


def check_column_parallel(w_shape: tuple[int, ...], shards: int, name: str = "layer") -> None:
    """Raise ``ValueError`` unless ``N`` of a ``[N, K]`` weight splits evenly over ``shards``."""
    n = w_shape[0]
    if n % shards:
        raise ValueError(
            f"column-parallel {name}: weight [N={n}, K={w_shape[1]}] cannot be split along N over "
            f"{shards} devices: N is not a multiple of {shards}"
        )


def check_row_parallel(w_shape: tuple[int, ...], shards: int, name: str = "layer") -> None:
    """Raise ``ValueError`` unless each of ``shards`` K slices holds whole 32-element blocks."""
    k = w_shape[1]
    if k % shards or (k // shards) % BLOCK_SIZE:
        raise ValueError(
            f"row-parallel {name}: weight [N={w_shape[0]}, K={k}] cannot be split along K over {shards} "
            f"devices: each device's K range ({k}/{shards}) must be a whole number of {BLOCK_SIZE}-element "
            f"MXFP8 blocks, or a block's shared scale would be split across devices"
        )


def check_data_parallel(x_shape: tuple[int, ...], shards: int, data_axis: str, layer: str = "layer") -> None:
    """Raise ``ValueError`` unless the batch (rows ``B``) of ``x [B, K]`` splits evenly over ``shards`` devices."""
    b = x_shape[0]
    if b % shards:
        raise ValueError(
            f"{layer}: x [B={b}, K={x_shape[1]}] cannot be split along B over the {shards} devices of mesh axis "
            f"{data_axis!r}: B is not a multiple of {shards} (pad the batch, or pass data_axis=None to give every "
            "device all of it)"
        )


def check_operands(layer: str, x: jax.Array | None, w: MXArray, mesh: Mesh, axes: tuple[str | None, ...]) -> None:
    """Raise unless ``w`` is an MXArray ``[N, K]``, ``x`` (if given) a ``[B, K]`` array, and ``mesh`` has ``axes``
    (``(model_axis,)`` or ``(model_axis, data_axis)``: two different axes, and B splits evenly over the data axis).

    Checked on the global shapes, before ``shard_map`` splits them (a per-shard error would name shapes the caller
    never wrote, and a 3-D ``x`` would otherwise come back with its shards stacked along the wrong axis).
    """
    if not isinstance(w, MXArray) or w.ndim != 2:
        got = f"an MXArray with shape {w.shape}" if isinstance(w, MXArray) else type(w).__name__
        raise TypeError(f"{layer}: the weight must be an MXArray [N, K] (mxfp8_xla.quantize(w) makes one), got {got}")
    if x is not None and (jnp.ndim(x) != 2 or jnp.shape(x)[1] != w.shape[1]):
        raise ValueError(
            f"{layer}: x must be [B, K] with K = {w.shape[1]} (the weight is {w.shape}), "
            f"got shape {tuple(jnp.shape(x))} (reshape leading axes into B first)"
        )
    missing = [a for a in axes if a is not None and a not in mesh.shape]
    if missing:
        raise ValueError(f"{layer}: the mesh has axes {tuple(mesh.shape)}, not {missing}")
    if len(axes) == 2 and axes[0] == axes[1]:
        raise ValueError(f"{layer}: model_axis and data_axis are both {axes[0]!r}; they must be different mesh axes")
    if x is not None and len(axes) == 2 and axes[1] is not None:
        check_data_parallel(jnp.shape(x), mesh.shape[axes[1]], axes[1], layer)


def _weight_spec(kind: str, model_axis: str) -> P:
    return P(model_axis, None) if kind == "column" else P(None, model_axis)


def shard_weight(w: MXArray, mesh: Mesh, kind: str, model_axis: str = "model", name: str = "layer") -> MXArray:
    """Place ``w [N, K]`` on ``mesh`` for a ``"column"`` or ``"row"`` parallel layer (data and scales alike)."""
    check_operands(name, None, w, mesh, (model_axis,))
    shards = mesh.shape[model_axis]
    if kind == "column":
        check_column_parallel(w.shape, shards, name)
    elif kind == "row":
        check_row_parallel(w.shape, shards, name)
    else:
        raise ValueError(f"{name}: kind must be 'column' or 'row', got {kind!r}")
    sharding = NamedSharding(mesh, _weight_spec(kind, model_axis))
    return MXArray(jax.device_put(w.data, sharding), jax.device_put(w.scale, sharding))


def _w_specs(kind: str, model_axis: str) -> MXArray:
    spec = _weight_spec(kind, model_axis)
    return MXArray(spec, spec)  # a pytree of specs mirroring the MXArray


def column_parallel(
    x: jax.Array,
    w: MXArray,
    mesh: Mesh,
    *,
    model_axis: str = "model",
    data_axis: str | None = "data",
    out_dtype: DTypeLike = jnp.bfloat16,
    backend: str = "emulation",
    name: str = "layer",
) -> jax.Array:
    """``x [B, K] @ w.T`` with ``w`` split along N; the result ``[B, N]`` stays split along N."""
    check_operands(f"column-parallel {name}", x, w, mesh, (model_axis, data_axis))
    out_dtype = check_float_dtype(f"column-parallel {name}: out_dtype", out_dtype)
    check_column_parallel(w.shape, mesh.shape[model_axis], name)

    def local(xs: jax.Array, ws: MXArray) -> jax.Array:
        return shard_product(xs, ws, False, out_dtype=out_dtype, backend=backend, name=name)

    return shard_map(
        local,
        mesh=mesh,
        in_specs=(P(data_axis, None), _w_specs("column", model_axis)),
        out_specs=P(data_axis, model_axis),
    )(x, w)


def row_parallel(
    x: jax.Array,
    w: MXArray,
    mesh: Mesh,
    *,
    model_axis: str = "model",
    data_axis: str | None = "data",
    out_dtype: DTypeLike = jnp.bfloat16,
    backend: str = "emulation",
    name: str = "layer",
) -> jax.Array:
    """``x [B, K] @ w.T`` with ``x`` and ``w`` split along K; partial sums reduced with ``psum``."""
    check_operands(f"row-parallel {name}", x, w, mesh, (model_axis, data_axis))
    out_dtype = check_float_dtype(f"row-parallel {name}: out_dtype", out_dtype)
    check_row_parallel(w.shape, mesh.shape[model_axis], name)

    def local(xs: jax.Array, ws: MXArray) -> jax.Array:
        partial = shard_product(xs, ws, True, out_dtype=out_dtype, backend=backend, name=name)
        return jax.lax.psum(partial.astype(jnp.float32), model_axis).astype(out_dtype)

    return shard_map(
        local,
        mesh=mesh,
        in_specs=(P(data_axis, model_axis), _w_specs("row", model_axis)),
        out_specs=P(data_axis, None),
    )(x, w)


def mlp(
    x: jax.Array,
    w_in: MXArray,
    w_out: MXArray,
    mesh: Mesh,
    *,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu,
    model_axis: str = "model",
    data_axis: str | None = "data",
    out_dtype: DTypeLike = jnp.bfloat16,
    backend: str = "emulation",
) -> jax.Array:
    """``activation(x @ w_in.T) @ w_out.T``: column- then row-parallel, one ``psum`` at the end."""
    kw = dict(model_axis=model_axis, data_axis=data_axis, backend=backend)
    h = column_parallel(x, w_in, mesh, out_dtype=out_dtype, name="mlp.in", **kw)
    return row_parallel(activation(h), w_out, mesh, out_dtype=out_dtype, name="mlp.out", **kw)
