"""``MXFP8Dense``: a drop-in replacement for ``flax.linen.Dense`` with MXFP8 weights and activations."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from mxfp8_xla.flax import _common
from mxfp8_xla.mxarray import FLOAT_DTYPES, MXArray

Initializer = Any  # (key, shape, dtype) -> array, as for nn.Dense
default_kernel_init = nn.initializers.lecun_normal()  # nn.Dense's default


class MXFP8Dense(nn.Module):
    """``y = x @ W + b`` with ``x`` and ``W`` quantized to MXFP8 (blocks of 32 along K).

    Attributes:
      features: N, the number of output features (K comes from the input).
      use_bias, kernel_init, bias_init, param_dtype: as in ``nn.Dense``.
      dtype: output dtype; ``None`` promotes input and ``param_dtype`` like ``nn.Dense``.
        Float inputs are quantized from their own dtype (no cast to ``dtype`` first).
      precision: accepted for signature compatibility and ignored (MXFP8 fixes the math).
      mode: ``"inference"`` (default): params ``kernel_q`` float8_e4m3fn ``[N, K]``,
        ``kernel_scale`` uint8 ``[N, K/32]``, ``bias`` ``[N]``. ``"train"``: params
        ``kernel [K, N]`` and ``bias [N]`` exactly like ``nn.Dense``, quantized per call,
        with straight-through gradients (see ``mxfp8_xla.ste``).
      backend: ``mxfp8_matmul`` backend name; ``"auto"`` picks one.

    Inference params are initialized by quantizing ``kernel_init``'s ``[K, N]`` draw
    (the same draw train mode and ``nn.Dense`` make for the same key). K must be a
    multiple of 32 in both modes.
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = nn.initializers.zeros_init()
    mode: _common.Mode = "inference"
    backend: str = "auto"

    def __call__(self, inputs: jax.Array, out_sharding: PartitionSpec | NamedSharding | None = None) -> jax.Array:
        """Apply the layer to ``inputs [..., K]``; returns ``[..., features]``, sharded as ``out_sharding`` if given
        (on ``Explicit`` mesh axes a layer whose input and kernel both split K needs it, as ``jnp.dot`` does:
        :func:`mxfp8_xla.mxfp8_matmul`)."""
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

    @nn.compact
    def _apply(
        self,
        inputs: jax.Array,
        add_norm: tuple[jax.Array, jax.Array, float] | None,
        out_sharding: PartitionSpec | NamedSharding | None,
    ):
        layer = f"MXFP8Dense at '{'/'.join(self.scope.path) or '<root>'}'"
        if add_norm is not None and self.mode != "inference":
            raise ValueError(f"{layer}: with_add_rms_norm needs mode='inference' (MXFP8 params), got {self.mode!r}")
        _common.check_config(layer, self.mode, self.backend, self.dtype, self.param_dtype)
        x = _common.prepare_input(layer, inputs)
        k, n = x.shape[-1], self.features
        _common.check_k(layer, k, f"input of shape {tuple(x.shape)}")
        pdt = self.param_dtype
        self._check_mode_matches_params(layer)
        self._check_input_width(layer, x)

        if self.mode == "train":
            self._check_existing(layer, "kernel", (k, n), FLOAT_DTYPES)
            kernel = self.param("kernel", self.kernel_init, (k, n), pdt)
            weights = {"kernel": kernel}
        else:
            self._check_existing(layer, "kernel_q", (n, k), (_common.FP8,))
            self._check_existing(layer, "kernel_scale", (n, k), (_common.UINT8,))
            drawn: list[tuple[MXArray, Any]] = []  # one kernel draw feeds both variables

            def init(field: str) -> Any:
                if not drawn:
                    w = self.kernel_init(self.make_rng("params"), (k, n), pdt)
                    if (problem := _common.kernel_metadata_problem(w, 2)) is not None:
                        raise TypeError(f"{layer}: kernel_init returned a boxed kernel it cannot keep: {problem}")
                    # kernel_q/kernel_scale keep the box of a partitioned kernel_init, names transposed.
                    drawn.append((_common.quantize_kernel(nn.meta.unbox(w)), _common.transposed_box(w, 2)))
                q, box = drawn[0]
                return box(getattr(q, field))

            kernel_q = self.variable("params", "kernel_q", init, "data").value
            kernel_scale = self.variable("params", "kernel_scale", init, "scale").value
            weights = {"kernel_q": kernel_q, "kernel_scale": kernel_scale}

        bias = None
        if self.use_bias:
            self._check_existing(layer, "bias", (n,), FLOAT_DTYPES)
            bias = self.param("bias", self.bias_init, (n,), pdt)
        out_dtype = _common.output_dtype(layer, x, self.dtype, pdt)
        if add_norm is not None:
            delta, norm_weight, eps = add_norm
            return _common.forward_add_rms_norm(
                x,
                delta,
                norm_weight,
                eps=eps,
                **weights,
                bias=bias,
                out_dtype=out_dtype,
                backend=self.backend,
                name=layer,
                out_sharding=out_sharding,
            )
        return _common.forward(
            x, **weights, bias=bias, out_dtype=out_dtype, backend=self.backend, name=layer, out_sharding=out_sharding
        )

    def _check_mode_matches_params(self, layer: str) -> None:
        """Raise if the loaded params belong to the other mode."""
        has_train, has_q = self.has_variable("params", "kernel"), self.has_variable("params", "kernel_q")
        if self.mode == "inference" and has_train and not has_q:
            raise ValueError(
                f"{layer}: mode='inference' needs params 'kernel_q'/'kernel_scale' but got a train-mode "
                "'kernel' [K, N]; convert them with mxfp8_xla.flax.quantize_params"
            )
        if self.mode == "train" and has_q and not has_train:
            raise ValueError(
                f"{layer}: mode='train' needs a float 'kernel' [K, N] but got inference-mode params "
                "'kernel_q'/'kernel_scale'"
            )

    def _check_input_width(self, layer: str, x: jax.Array) -> None:
        """Raise ``ValueError`` if the loaded kernel (``kernel_q [N, K]`` or ``kernel [K, N]``) has another K than
        the input: the input is named as the likely culprit, before the param checks would blame the param."""
        name, k_axis = ("kernel", 0) if self.mode == "train" else ("kernel_q", 1)
        if not self.has_variable("params", name):
            return
        shape = tuple(jnp.shape(nn.meta.unbox(self.get_variable("params", name))))
        if len(shape) == 2 and shape[k_axis] != x.shape[-1]:
            raise ValueError(
                f"{layer}: input has shape {tuple(x.shape)} and dtype {x.dtype}; expected last dimension "
                f"{shape[k_axis]} (the K of the params' '{name}', shape {shape})"
            )

    def _check_existing(self, layer: str, name: str, shape: tuple[int, ...], dtypes: tuple[Any, ...]) -> None:
        """Clear errors for a loaded param of the wrong shape/dtype, or missing where it cannot be created (before
        flax's own checks). ``shape`` is ``(N, K)`` for ``kernel_scale`` (checked in either of its layouts)."""
        if self.has_variable("params", name):
            value = nn.meta.unbox(self.get_variable("params", name))
            if name == "kernel_scale":
                _common.check_scale(layer, value, *shape)
            else:
                _common.check_param(layer, name, value, shape, dtypes)
        elif not self.is_mutable_collection("params"):  # init (or a mutable apply) creates it
            self._raise_missing(layer, name, shape, dtypes)

    def _raise_missing(self, layer: str, name: str, shape: tuple[int, ...], dtypes: tuple[Any, ...]) -> None:
        """Raise ``ValueError`` for a param missing from the loaded params: what it should be and what is there."""
        *others, last = [str(jnp.dtype(d)) for d in dtypes]
        kinds = f"{', '.join(others)} or {last}" if others else last
        if name == "kernel_scale":
            expected = f"{kinds} of {_common.scale_layouts(*shape)}"
        else:
            axes = {"kernel": "[K, N]", "kernel_q": "[N, K]", "bias": "[N]; or build the layer with use_bias=False"}
            expected = f"{kinds} of shape {shape} {axes[name]}"
        held = sorted(self.variables.get("params", {}))
        if not held:
            hint = (
                "there are no params at this path: check the layer's name (an unnamed MXFP8Dense is "
                "'MXFP8Dense_<i>', an unnamed nn.Dense 'Dense_<i>'; name layers to swap them)"
            )
        else:
            hint = f"the params here hold {held}"
            if self.mode == "inference" and "kernel" in held:
                hint += ", with a train-mode 'kernel' [K, N]: convert the params with mxfp8_xla.flax.quantize_params"
        raise ValueError(f"{layer}: params lack '{name}' (expected {expected}); {hint}")
