"""``MXFP8Linear``: a drop-in replacement for ``flax.nnx.Linear`` with MXFP8 weights and activations."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mxfp8_xla.flax import _common
from mxfp8_xla.mxarray import FLOAT_DTYPES

Initializer = Any  # (key, shape, dtype) -> array, as for nnx.Linear
default_kernel_init = nnx.initializers.lecun_normal()  # nnx.Linear's defaults
default_bias_init = nnx.initializers.zeros_init()


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
            self.kernel = nnx.Param(kernel)
        else:
            q = _common.quantize_kernel(kernel)
            self.kernel_q = nnx.Param(q.data)
            self.kernel_scale = nnx.Param(q.scale)
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

        Copies ``use_bias``, ``dtype``, ``param_dtype`` and ``precision``; the bias array
        is kept as is. Variable metadata (e.g. sharding annotations) is not carried over.
        """
        k, n = linear.kernel.shape
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
        kernel = linear.kernel[...]
        if mode == "train":
            new.kernel = nnx.Param(kernel)
        else:
            q = _common.quantize_kernel(kernel)
            new.kernel_q, new.kernel_scale = nnx.Param(q.data), nnx.Param(q.scale)
        if linear.bias is not None:
            new.bias = nnx.Param(linear.bias[...])
        return new

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Apply the layer to ``inputs [..., in_features]``; returns ``[..., out_features]``."""
        return self._apply(inputs, None)

    def with_add_rms_norm(
        self, x: jax.Array, delta: jax.Array, norm_weight: jax.Array, *, eps: float
    ) -> tuple[jax.Array, jax.Array]:
        """``(self(rms_norm(x + delta, norm_weight)), x + delta)``: a pre-norm block's residual add and RMSNorm in
        front of the layer (:func:`mxfp8_xla.add_rms_norm_matmul`; one kernel launch for one bf16 row on the
        ``hopper`` backend). Inference mode only."""
        return self._apply(x, (delta, norm_weight, eps))

    def _apply(self, inputs: jax.Array, add_norm: tuple[jax.Array, jax.Array, float] | None):
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
                name=layer,
            )  # fmt: skip
        return _common.forward(x, **weights, bias=bias, out_dtype=out_dtype, backend=self.backend, name=layer)
