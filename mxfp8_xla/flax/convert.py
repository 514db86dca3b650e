"""Convert trained ``nn.Dense`` params / ``nnx.Linear`` modules to MXFP8 inference layers."""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
from collections.abc import Iterable, Mapping, MutableMapping, MutableSequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import meta
from flax.nnx import graph

from mxfp8_xla.backends.flashinfer import prepare_weight
from mxfp8_xla.flax import _common
from mxfp8_xla.flax.nnx import MXFP8Linear
from mxfp8_xla.mxarray import FLOAT_DTYPES, MXArray
from mxfp8_xla.numerics import BLOCK_SIZE

logger = logging.getLogger("mxfp8_xla.flax")

Patterns = str | Iterable[str]


@dataclasses.dataclass(frozen=True)
class ConvertedLayer:
    """One converted layer: its '/'-joined path, kernel shape ``(K, N)`` (or ``(..., K, N)``), bytes."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    bytes_before: int
    """Bytes of the high-precision kernel."""
    bytes_after: int
    """Bytes of ``kernel_q`` plus ``kernel_scale`` (``N*K + N*K/32``)."""
    aliases: tuple[str, ...] = ()
    """``quantize_module``: the other paths to the same (shared) layer, all converted with it."""


@dataclasses.dataclass(frozen=True)
class SkippedLayer:
    """A candidate layer left as it was, and why."""

    path: str
    reason: str
    aliases: tuple[str, ...] = ()
    """``quantize_module``: the other paths to the same (shared) layer, all left with it."""


@dataclasses.dataclass
class ConversionReport:
    """What ``quantize_params`` / ``quantize_module`` converted and skipped.

    Byte counts cover kernels only; biases are kept unchanged.
    """

    converted: list[ConvertedLayer] = dataclasses.field(default_factory=list)
    skipped: list[SkippedLayer] = dataclasses.field(default_factory=list)

    @property
    def bytes_before(self) -> int:
        """Bytes of the converted layers' kernels before conversion."""
        return sum(c.bytes_before for c in self.converted)

    @property
    def bytes_after(self) -> int:
        """Bytes of the converted layers' MXFP8 data and scales."""
        return sum(c.bytes_after for c in self.converted)

    @property
    def bytes_saved(self) -> int:
        """``bytes_before - bytes_after``."""
        return self.bytes_before - self.bytes_after

    def __str__(self) -> str:
        lines = [
            f"converted {len(self.converted)} layer(s), skipped {len(self.skipped)}; kernel bytes "
            f"{self.bytes_before} -> {self.bytes_after} (saved {self.bytes_saved})"
        ]
        lines += [f"  converted {_named(c)}: kernel {list(c.shape)} {c.dtype}" for c in self.converted]
        lines += [f"  skipped {_named(s)}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def _named(layer: ConvertedLayer | SkippedLayer) -> str:
    return layer.path + (f" (also {', '.join(layer.aliases)})" if layer.aliases else "")


def _patterns(p: Patterns) -> tuple[str, ...]:
    return (p,) if isinstance(p, str) else tuple(p)


def _matches(path: str, patterns: Patterns) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in _patterns(patterns))


def _selected(path: str, include: Patterns, exclude: Patterns) -> str | None:
    """``None`` if ``path`` is selected, else the reason it is not."""
    if not _matches(path, include):
        return f"path not matched by include={_patterns(include)}"
    hit = [p for p in _patterns(exclude) if fnmatch.fnmatchcase(path, p)]
    return f"path matched by exclude pattern {hit[0]!r}" if hit else None


def _kernel_problem(kernel: Any, stacked: bool = False, stacked_hint: str = "pass stacked=PATTERNS") -> str | None:
    """``None`` if a ``[K, N]`` (``[..., K, N]`` if ``stacked``) kernel can be quantized, else why not
    (``stacked_hint``: how to convert layers stacked along leading axes)."""
    shape, dtype = tuple(jnp.shape(kernel)), jnp.dtype(kernel.dtype)
    if len(shape) != 2 and not (stacked and len(shape) > 2):
        hint = f" (for layers stacked by a vmap or scan, {stacked_hint})" if len(shape) > 2 else ""
        return f"kernel has shape {shape}: not a 2-D [K, N] Dense kernel{hint}"
    if shape[-2] % BLOCK_SIZE:
        return f"kernel has shape {shape}: K = {shape[-2]} is not a multiple of {BLOCK_SIZE}"
    if dtype not in FLOAT_DTYPES:
        return f"kernel with shape {shape} has dtype {dtype}; expected float32, bfloat16 or float16"
    return None


def _skip(
    report: ConversionReport, path: str, reason: str, level: int = logging.WARNING, aliases: tuple[str, ...] = ()
) -> None:
    also = f" (also {', '.join(map(repr, aliases))})" if aliases else ""
    logger.log(level, "mxfp8_xla: not converting layer %r%s: %s", path, also, reason)
    report.skipped.append(SkippedLayer(path, reason, aliases))


def _record(report: ConversionReport, path: str, kernel: Any, aliases: tuple[str, ...] = ()) -> None:
    shape = tuple(kernel.shape)
    size = math.prod(shape)
    before = size * jnp.dtype(kernel.dtype).itemsize
    after = size + size // BLOCK_SIZE
    report.converted.append(ConvertedLayer(path, shape, str(kernel.dtype), before, after, aliases))


def quantize_params(
    params: Mapping[str, Any], *, include: Patterns = "*", exclude: Patterns = (), stacked: Patterns = ()
) -> tuple[dict[str, Any], ConversionReport]:
    """Turn ``nn.Dense`` params (``kernel [K, N]``, ``bias``) into ``MXFP8Dense`` inference params.

    Every mapping in ``params`` holding a ``kernel`` (and at most a ``bias`` beside
    it) is a candidate; its path is its keys joined by '/' (e.g. ``"params/Dense_0"``
    if you pass the whole variables dict). Candidates whose path matches a glob in
    ``include`` and none in ``exclude`` (``fnmatch``, where ``*`` also matches '/')
    get ``kernel_q`` float8_e4m3fn ``[N, K]`` and ``kernel_scale`` uint8 ``[N, K/32]``
    instead of ``kernel``; the bias is kept as is. Candidates that cannot be converted
    (K not a multiple of 32, kernel not 2-D, unsupported dtype) are skipped with a
    warning from the ``mxfp8_xla.flax`` logger; build those layers with ``nn.Dense``.
    Layers whose path matches a glob in ``stacked`` (``nn.scan``/``nn.vmap`` over
    layers) hold kernels ``[..., K, N]`` and get ``kernel_q [..., N, K]`` and
    ``kernel_scale [..., N, K/32]``; elsewhere kernels that are not 2-D are skipped.

    A kernel boxed in ``nn.Partitioned`` / ``nn.LogicallyPartitioned`` (``nn.with_partitioning``) gives
    ``kernel_q`` and ``kernel_scale`` the same box with its last two axis names swapped (K's name also on K/32),
    as ``MXFP8Dense`` init does; the bias keeps its box. A kernel boxed in other metadata is skipped.

    Returns the new params (plain dicts; the input is not modified) and a report.
    """
    _check_params_mapping("quantize_params", params, "Linen's variables['params'], or the whole variables dict")
    report = ConversionReport()
    return _convert_tree(params, (), include, exclude, stacked, report), report


def _check_params_mapping(fn: str, params: Any, expected: str) -> None:
    """Raise ``TypeError`` unless the top-level ``params`` is a mapping (the recursion leaves other nodes alone)."""
    if not isinstance(params, Mapping):
        shown = repr(params)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise TypeError(f"{fn} expects a params mapping ({expected}), got {type(params).__name__} {shown}")


def swizzle_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with each 2-D inference ``kernel_scale [N, K/32]`` in FlashInfer's 1-D 128x4 layout.

    The ``flashinfer`` backend (Blackwell) reads that layout. Given ``[N, K/32]`` scales, a layer swizzles them
    inside every traced call, and XLA:CPU was seen to keep that swizzle inside a ``lax.scan`` decode loop's body
    (docs/backends.md). Swizzled once here, the layers pass a ``FlashInferWeight`` instead, which every backend
    takes; the others undo the swizzle in every call, at a cost (a logged warning on a GPU backend), so call this
    only where ``flashinfer`` runs. Stacked (``nn.scan``) scales of more than two dimensions are
    left as they are. Checkpoints store ``[N, K/32]``: save the params from before this call. Returns plain dicts;
    the input is not modified. A ``kernel_scale`` boxed in Linen metadata (``nn.Partitioned``, from a partitioned
    ``kernel_init`` or ``quantize_params``) is refused with ``ValueError``: the 1-D layout cannot keep a 2-D
    partitioning; unbox unsharded params first (``flax.core.meta.unbox``).
    """
    _check_params_mapping(
        "swizzle_params",
        params,
        "Linen's variables['params'] or the whole variables dict, or NNX's nnx.to_pure_dict(nnx.state(m, nnx.Param))",
    )
    return _swizzle_tree(params, ())


def _swizzle_tree(node: Any, path: tuple[str, ...]) -> Any:
    if not isinstance(node, Mapping):
        return node
    out = {key: _swizzle_tree(value, (*path, str(key))) for key, value in node.items()}
    boxed = node.get("kernel_scale")
    scale = meta.unbox(boxed)
    if "kernel_q" in node and getattr(scale, "ndim", 0) == 2:
        if isinstance(boxed, meta.AxisMetadata):
            names = getattr(boxed, "names", None)
            raise ValueError(
                f"swizzle_params: layer {'/'.join(path) or '<root>'!r} has a kernel_scale boxed in "
                f"{type(boxed).__name__}{f' with names {tuple(names)}' if names is not None else ''}; the 1-D "
                "swizzled layout (rows interleaved in tiles of 128) cannot keep a 2-D partitioning, and swizzle_params "
                "is for unsharded params: unbox them first (flax.core.meta.unbox(params)) where they run unsharded"
            )
        out["kernel_scale"] = prepare_weight(MXArray(meta.unbox(node["kernel_q"]), scale)).scale_swizzled
    return out


def _convert_tree(
    node: Any,
    path: tuple[str, ...],
    include: Patterns,
    exclude: Patterns,
    stacked: Patterns,
    report: ConversionReport,
) -> Any:
    if not isinstance(node, Mapping):
        return node
    if "kernel" in node and hasattr(meta.unbox(node["kernel"]), "shape"):
        name = "/".join(path) or "<root>"
        extra = sorted(set(node) - {"kernel", "bias"})
        kernel = meta.unbox(node["kernel"])
        if extra:
            _skip(report, name, f"holds params {extra} besides kernel/bias: not an nn.Dense")
        elif (reason := _selected(name, include, exclude)) is not None:
            _skip(report, name, reason, logging.INFO)
        elif (
            reason := _kernel_problem(kernel, _matches(name, stacked))
            or _common.kernel_metadata_problem(node["kernel"], kernel.ndim)
        ) is not None:
            _skip(report, name, reason)
        else:
            q = _common.quantize_kernel(kernel)
            _record(report, name, kernel)
            box = _common.transposed_box(node["kernel"], kernel.ndim)  # a partitioned kernel's names, transposed
            out = {"kernel_q": box(q.data), "kernel_scale": box(q.scale)}
            if "bias" in node:
                out["bias"] = node["bias"]
            return out
    return {k: _convert_tree(v, (*path, str(k)), include, exclude, stacked, report) for k, v in node.items()}


_CONTAINERS = (MutableSequence, MutableMapping)


def _is_container(node: Any) -> bool:
    """``nnx.List``/``nnx.Dict`` (and plain lists/dicts): children are items, not attributes."""
    return isinstance(node, _CONTAINERS)


_Ref = tuple[str, Any, Any]
"""One reference to a layer: its '/'-joined path, the object holding it, and its key/attribute there."""


def _linear_refs(model: nnx.Module) -> list[tuple[nnx.Linear, list[_Ref]]]:
    """Every exact ``nnx.Linear`` under ``model``, once each, with every reference to it, in NNX's order.

    A shared sub-module is walked once per path to it, so a Linear inside it gets all its paths; cycles are cut.
    """
    refs: dict[int, tuple[nnx.Linear, list[_Ref]]] = {}

    def walk(node: Any, path: tuple[str, ...], ancestors: frozenset[int]) -> None:
        for key, child in graph.get_node_impl(node).node_dict(node).items():
            child_path = (*path, str(key))
            if type(child) is nnx.Linear:
                refs.setdefault(id(child), (child, []))[1].append(("/".join(child_path), node, key))
            elif graph.is_node(child) and id(child) not in ancestors:
                walk(child, child_path, ancestors | {id(child)})

    walk(model, (), frozenset({id(model)}))
    return list(refs.values())


def quantize_module(
    model: nnx.Module,
    *,
    include: Patterns = "*",
    exclude: Patterns = (),
    backend: str = "auto",
) -> ConversionReport:
    """Replace ``nnx.Linear`` sub-modules of ``model`` by inference-mode ``MXFP8Linear``, in place.

    ``model`` is modified in place (``nnx.clone`` it first to keep the original).
    Paths are attribute names / container keys joined by '/' (e.g. ``"layers/0"``) and
    are selected with ``include``/``exclude`` globs as in ``quantize_params``. Only
    exact ``nnx.Linear`` instances are converted (subclasses may change the math).
    Layers with K not a multiple of 32, unsupported dtypes, or that are ``model``
    itself are skipped with a logged reason. A Linear reachable by several paths
    (shared) is converted once and every reference to it is replaced by the one
    ``MXFP8Linear``, so it stays shared; it is reported once, under its first path in
    NNX's order (keys sorted), with the others in ``aliases``. It must be selected at
    all its paths or at none: if the globs select some and not others, ``ValueError``
    (nothing is modified). One referenced from an immutable container (a tuple) is
    skipped. Returns the report.
    """
    report = ConversionReport()
    if type(model) is nnx.Linear:
        _skip(report, "<root>", "the model itself is an nnx.Linear; use MXFP8Linear.from_linear")
        return report
    found = _linear_refs(model)
    for _, refs in found:  # check every selection before changing anything
        verdicts = {name: _selected(name, include, exclude) for name, _, _ in refs}
        chosen = [name for name, reason in verdicts.items() if reason is None]
        if chosen and len(chosen) < len(verdicts):
            left = next(name for name, reason in verdicts.items() if reason is not None)
            raise ValueError(
                f"nnx.Linear shared by paths {list(verdicts)} is selected at {chosen[0]!r} but not at {left!r} "
                f"({verdicts[left]}): a shared layer is converted at all its paths or none; make include/exclude "
                "select all of them or none"
            )
    for linear, refs in found:
        name, aliases = refs[0][0], tuple(r[0] for r in refs[1:])
        kernel = linear.kernel.get_value()
        if isinstance(kernel, jax.ShapeDtypeStruct):
            raise TypeError(
                f"quantize_module: the nnx.Linear at {name!r} is abstract (kernel {kernel}, from nnx.eval_shape); "
                "convert inside the abstract evaluation instead: nnx.eval_shape(f) with an f that builds the model, "
                "calls quantize_module on it and returns it"
            )
        if (reason := _selected(name, include, exclude)) is not None:
            _skip(report, name, reason, logging.INFO, aliases)
            continue
        frozen = [(path, parent) for path, parent, _ in refs if not isinstance(parent, (nnx.Pytree, *_CONTAINERS))]
        if frozen:
            where, holder = frozen[0]
            _skip(
                report,
                name,
                f"held at {where!r} by a {type(holder).__name__}, not changeable in place",
                aliases=aliases,
            )
            continue
        reason = _kernel_problem(
            kernel, stacked_hint="nnx.vmap(lambda layer: MXFP8Linear.from_linear(layer)) converts them"
        )
        if reason is not None:
            _skip(report, name, reason, aliases=aliases)
            continue
        try:
            new = MXFP8Linear.from_linear(linear, backend=backend)
        except (TypeError, ValueError) as err:  # e.g. float64 dtype/param_dtype
            _skip(report, name, str(err), aliases=aliases)
            continue
        for _, parent, key in refs:
            if _is_container(parent):
                parent[key] = new
            else:
                setattr(parent, key, new)
        _record(report, name, kernel, aliases)
    return report
