"""``MXFP8Linear``: a drop-in replacement for ``flax.nnx.Linear`` with MXFP8 weights and activations."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import meta
from jax.sharding import NamedSharding, PartitionSpec

from mxfp8_xla.flax import _common
from mxfp8_xla.mxarray import FLOAT_DTYPES, MXArray

logger = logging.getLogger("mxfp8_xla.flax")

Initializer = Any  # (key, shape, dtype) -> array, as for nnx.Linear
default_kernel_init = nnx.initializers.lecun_normal()  # nnx.Linear's defaults
default_bias_init = nnx.initializers.zeros_init()

# flax NNX Variable metadata (flax/nnx/variablelib.py, spmd.py), as kernel_q and kernel_scale take the kernel's:
# per-axis shardings of the [K, N] kernel, transposed: 'out_sharding' (nnx.with_partitioning's, read by
# nnx.get_partition_spec and by eager sharding), 'optimizer_sharding' (nnx.Optimizer's for the Param's state), and
# 'sharding'/'sharding_names', flax's deprecated spellings of 'out_sharding' (kernel_init metadata only).
_SHARDINGS = ("out_sharding", "optimizer_sharding", "sharding_names", "sharding")
# Kept as they are: the mesh and logical rules of the shardings, and the Variable's modes (required_metadata).
_AS_IS = ("mesh", "sharding_rules", "hijax", "ref", "eager_sharding")
# Variable hooks (deprecated in flax): they act on the float kernel's value, not on the MXFP8 arrays.
_HOOKS = ("on_get_value", "on_set_value", "on_create_value", "on_add_axis", "on_remove_axis")


class MXFP8Linear(nnx.Module):
    """``y = x @ W + b`` with ``x`` and ``W`` quantized to MXFP8 (blocks of 32 along K).

    Arguments match ``nnx.Linear`` (``precision`` is accepted and ignored), plus:

    - ``mode="inference"`` (default): ``nnx.Param`` s ``kernel_q`` float8_e4m3fn
      ``[N, K]``, ``kernel_scale`` uint8 ``[N, K/32]`` and ``bias [N]``, initialized by
      quantizing ``kernel_init``'s ``[K, N]`` draw (the draw ``nnx.Linear`` makes).
    - ``mode="train"``: ``kernel [K, N]`` and ``bias [N]`` exactly like ``nnx.Linear``,
      quantized per call, with straight-through gradients (see ``mxfp8_xla.ste``).
    - ``backend``: ``mxfp8_matmul`` backend name; ``"auto"`` picks one.

    ``dtype`` is the output dtype (``None``: promote input and ``param_dtype``).
    ``in_features`` must be a multiple of 32 in both modes.

    A ``kernel_init`` with flax metadata (``nnx.with_partitioning(init, ("embed", "mlp"))``, ``nnx.with_metadata``)
    annotates train mode's ``kernel`` as in ``nnx.Linear``; in inference mode ``kernel_q [N, K]`` and
    ``kernel_scale [N, K/32]`` get it with the sharding's names transposed, ``("mlp", "embed")`` for both (K's name
    on K/32 too), and flax shards them eagerly by it as ``nnx.Linear`` does (under a mesh: ``jax.set_mesh``). What
    else is kept or dropped: :meth:`from_linear`; Variable hooks are refused (``TypeError``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        mode: _common.Mode = "inference",
        backend: str = "auto",
        rngs: nnx.Rngs,
    ) -> None:
        layer = f"MXFP8Linear({in_features}, {out_features})"
        _common.check_config(layer, mode, backend, dtype, param_dtype)
        _common.check_k(layer, in_features, "in_features")
        kernel = kernel_init(rngs.params(), (in_features, out_features), param_dtype)
        if mode == "train":
            self.kernel = nnx.Param(kernel)  # with kernel_init's metadata (if any), as in nnx.Linear
        else:
            metadata: Mapping[str, Any] = {}
            if isinstance(kernel, nnx.VariableMetadata):  # from nnx.with_partitioning / nnx.with_metadata
                hooks = [f for f in _HOOKS if getattr(kernel, f, ()) or kernel.metadata.get(f)]
                if hooks:
                    raise TypeError(
                        f"{layer}: kernel_init's metadata has Variable hooks {hooks}, which act on the float kernel "
                        "nnx.Linear would hold; inference mode holds MXFP8 kernel_q/kernel_scale and cannot apply "
                        "them: use mode='train', or a kernel_init without hooks"
                    )
                kernel, metadata = kernel.raw_value, kernel.metadata
            metadata = _inference_metadata(layer, metadata, "kernel_init's")
            self.kernel_q, self.kernel_scale = _inference_params(_common.quantize_kernel(kernel), metadata)
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
        else:
            self.bias = nnx.data(None)
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.precision, self.mode, self.backend = precision, mode, backend

    @classmethod
    def from_linear(cls, linear: nnx.Linear, *, mode: _common.Mode = "inference", backend: str = "auto") -> MXFP8Linear:
        """A new ``MXFP8Linear`` holding ``linear``'s weights (quantized in inference mode).

        Copies ``use_bias``, ``dtype``, ``param_dtype`` and ``precision``. The bias Param is copied
        with its metadata (``Variable.copy``), and so is the kernel in train mode. In inference mode
        ``kernel_q [N, K]`` and ``kernel_scale [N, K/32]`` take the kernel Param's metadata:

        - its shardings with their names transposed (N's name first, K's on K and K/32): ``out_sharding``
          (``nnx.with_partitioning(init, ("embed", "mlp"))`` gives ``("mlp", "embed")``; ``nnx.get_partition_spec``
          reads it) and ``optimizer_sharding``; a tuple, ``PartitionSpec`` or ``NamedSharding`` of at most 2
          names, else ``TypeError``/``ValueError`` (``quantize_module`` skips the layer, with the reason);
        - as they are: ``mesh``, ``sharding_rules`` and the Variable's modes (``eager_sharding``, ``hijax``,
          ``ref``), and other metadata whose value is not a tuple/list/``PartitionSpec``/``Sharding``;
        - dropped, with a warning on the ``mxfp8_xla.flax`` logger: Variable hooks (deprecated in flax; the
          kernel was read through them) and other tuple-like metadata, which may name the ``[K, N]`` kernel's axes
          (as flax's ``nnx.vmap``/``nnx.scan`` take tuples to be per axis) and is not for the new arrays.

        With eager sharding (flax's default) flax places the new params by their transposed ``out_sharding`` in
        the ``mesh`` metadata's mesh or the context's (``jax.set_mesh``), else in the mesh ``linear``'s kernel is
        sharded over, so this runs outside the mesh context too.
        """
        kernel_shape = tuple(getattr(getattr(linear, "kernel", None), "shape", ()))
        if len(kernel_shape) != 2:
            raise TypeError(
                f"MXFP8Linear.from_linear expects an nnx.Linear (a 2-D kernel [K, N]), got {type(linear).__name__}"
                + (f" with a kernel of shape {kernel_shape}" if hasattr(linear, "kernel") else " without a kernel")
            )
        k, n = kernel_shape
        layer = f"MXFP8Linear({k}, {n})"
        new = nnx.eval_shape(
            lambda: cls(
                k,
                n,
                use_bias=linear.bias is not None,
                dtype=linear.dtype,
                param_dtype=linear.param_dtype,
                precision=linear.precision,
                mode=mode,
                backend=backend,
                rngs=nnx.Rngs(0),
            )
        )
        if mode == "train":
            new.kernel = linear.kernel.copy()  # the same array and metadata
        else:
            metadata = _inference_metadata(layer, linear.kernel.get_metadata(), "the nnx.Linear's kernel", True)
            kernel = linear.kernel[...]
            with _source_mesh(metadata, kernel):
                new.kernel_q, new.kernel_scale = _inference_params(_common.quantize_kernel(kernel), metadata)
        if linear.bias is not None:
            new.bias = linear.bias.copy()  # the same array and metadata
        return new

    def __call__(self, inputs: jax.Array, out_sharding: PartitionSpec | NamedSharding | None = None) -> jax.Array:
        """Apply the layer to ``inputs [..., in_features]``; returns ``[..., out_features]``, sharded as
        ``out_sharding`` if given (as ``nnx.Linear``'s: on ``Explicit`` mesh axes a layer whose input and kernel
        both split K needs it; :func:`mxfp8_xla.mxfp8_matmul`)."""
        return self._apply(inputs, None, out_sharding)

    def with_add_rms_norm(
        self,
        x: jax.Array,
        delta: jax.Array,
        norm_weight: jax.Array,
        *,
        eps: float,
        out_sharding: PartitionSpec | NamedSharding | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """``(self(rms_norm(x + delta, norm_weight)), x + delta)``: a pre-norm block's residual add and RMSNorm in
        front of the layer (:func:`mxfp8_xla.add_rms_norm_matmul`; one kernel launch for one bf16 or float32 row on the
        ``hopper`` backend). Inference mode only; ``out_sharding`` as for ``__call__``."""
        return self._apply(x, (delta, norm_weight, eps), out_sharding)

    def _apply(
        self,
        inputs: jax.Array,
        add_norm: tuple[jax.Array, jax.Array, float] | None,
        out_sharding: PartitionSpec | NamedSharding | None = None,
    ):
        layer = f"MXFP8Linear({self.in_features}, {self.out_features})"
        if add_norm is not None and self.mode != "inference":
            raise ValueError(f"{layer}: with_add_rms_norm needs mode='inference' (MXFP8 params), got {self.mode!r}")
        x = _common.prepare_input(layer, inputs, self.in_features)
        k, n = self.in_features, self.out_features
        if self.mode == "train":
            kernel = self.kernel[...]
            _common.check_param(layer, "kernel", kernel, (k, n), FLOAT_DTYPES)
            weights = {"kernel": kernel}
        else:
            kernel_q, kernel_scale = self.kernel_q[...], self.kernel_scale[...]
            _common.check_param(layer, "kernel_q", kernel_q, (n, k), (_common.FP8,))
            _common.check_scale(layer, kernel_scale, n, k)
            weights = {"kernel_q": kernel_q, "kernel_scale": kernel_scale}
        bias = None
        if self.bias is not None:
            bias = self.bias[...]
            _common.check_param(layer, "bias", bias, (n,), FLOAT_DTYPES)
        out_dtype = _common.output_dtype(layer, x, self.dtype, self.param_dtype)
        if add_norm is not None:
            delta, norm_weight, eps = add_norm
            return _common.forward_add_rms_norm(
                x, delta, norm_weight, eps=eps, **weights, bias=bias, out_dtype=out_dtype, backend=self.backend,
                name=layer, out_sharding=out_sharding,
            )  # fmt: skip
        return _common.forward(
            x, **weights, bias=bias, out_dtype=out_dtype, backend=self.backend, name=layer, out_sharding=out_sharding
        )


def _inference_params(q: MXArray, metadata: Mapping[str, Any]) -> tuple[nnx.Param, nnx.Param]:
    """``kernel_q`` and ``kernel_scale`` Params with ``metadata`` (flax shards them eagerly by its out_sharding)."""
    return nnx.Param(q.data, **metadata), nnx.Param(q.scale, **metadata)


def _inference_metadata(
    layer: str, metadata: Mapping[str, Any], source: str, drop_hooks: bool = False
) -> dict[str, Any]:
    """The metadata of ``kernel_q [N, K]`` and ``kernel_scale [N, K/32]`` from that of a ``[K, N]`` kernel: shardings
    transposed, the rest kept or dropped (with a warning) as :meth:`MXFP8Linear.from_linear` says."""
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in metadata.items():
        if key in _SHARDINGS:
            out[key] = _transposed_sharding(layer, f"{source} {key!r}", value)
        elif key in _AS_IS:
            out[key] = value
        elif key in _HOOKS:
            if value:
                if not drop_hooks:  # the callers check first
                    raise TypeError(f"{layer}: {source} Variable hook {key!r} cannot be carried over")
                dropped.append(f"{key!r} (a Variable hook; the kernel was read through it)")
        elif isinstance(value, (tuple, list, PartitionSpec, jax.sharding.Sharding)):
            dropped.append(f"{key!r} (a {type(value).__name__}, which may name the [K, N] kernel's axes)")
        else:
            out[key] = value
    if dropped:
        logger.warning(
            "%s: %s metadata %s not carried over to kernel_q [N, K] / kernel_scale [N, K/32]",
            layer,
            source,
            ", ".join(dropped),
        )
    return out


def _transposed_sharding(layer: str, what: str, sharding: Any) -> Any:
    """A ``[K, N]`` kernel's sharding (axis names) for ``kernel_q [N, K]`` and ``kernel_scale [N, K/32]``."""
    if isinstance(sharding, NamedSharding):
        return sharding.update(spec=_transposed_sharding(layer, what, sharding.spec))
    if not isinstance(sharding, (tuple, list, PartitionSpec)) and sharding is not None:
        raise TypeError(
            f"{layer}: {what} metadata is a {type(sharding).__name__} ({sharding!r}); only axis names (a tuple, "
            "PartitionSpec or NamedSharding) can be carried over to kernel_q/kernel_scale, whose axes are the "
            "kernel's transposed"
        )
    if not sharding:  # None or (): not sharded
        return sharding
    names = tuple(sharding)
    if len(names) > 2:
        raise ValueError(f"{layer}: {what} metadata {sharding!r} names {len(names)} axes; the kernel [K, N] has 2")
    names = _common.transposed_names(names, 2)
    return sharding.update(partitions=names) if isinstance(sharding, PartitionSpec) else names


def _source_mesh(metadata: Mapping[str, Any], kernel: Any) -> contextlib.AbstractContextManager[Any]:
    """``jax.set_mesh`` of the mesh ``kernel`` is sharded over where flax's eager sharding of a Param with ``metadata``
    needs a mesh and has none (neither in the metadata nor in the context), else a null context."""
    sharding = metadata.get("out_sharding")
    placed = getattr(kernel, "sharding", None)  # a tracer has none
    if (
        metadata.get("eager_sharding", nnx.using_eager_sharding())
        and sharding
        and not isinstance(sharding, NamedSharding)
        and metadata.get("mesh") is None
        and meta.get_global_mesh() is None
        and isinstance(placed, NamedSharding)
    ):
        return jax.set_mesh(placed.mesh)
    return contextlib.nullcontext()
