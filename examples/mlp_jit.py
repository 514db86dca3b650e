"""Train a small MLP in float32, quantize it to MXFP8 with ``quantize_params``, jit it, compare with bf16.

Synthetic 10-class task: labels are the argmax of a fixed random teacher network on
Gaussian inputs with 40 features. The first layer (K = 40, not a multiple of 32) cannot
be quantized and stays ``nn.Dense``; the report says so. Runs on CPU in a few seconds:

    pip install -e . && python examples/mlp_jit.py      # or: PYTHONPATH=. python examples/mlp_jit.py
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Set

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mxfp8_xla.flax import MXFP8Dense, quantize_params

FEATURES, HIDDEN, CLASSES = 40, 256, 10


class MLP(nn.Module):
    """40 -> 256 -> 256 -> 10. Layers named in ``mxfp8`` are ``MXFP8Dense`` (inference mode)."""

    mxfp8: Set[str] = frozenset()
    dtype: jnp.dtype = jnp.float32

    def layer(self, features: int, name: str) -> nn.Module:
        if name in self.mxfp8:
            return MXFP8Dense(features, dtype=self.dtype, name=name)
        return nn.Dense(features, dtype=self.dtype, param_dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.gelu(self.layer(HIDDEN, "fc1")(x))
        x = nn.gelu(self.layer(HIDDEN, "fc2")(x))
        return self.layer(CLASSES, "head")(x).astype(jnp.float32)


def make_data(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Labels from a fixed random teacher: argmax of a 2-layer tanh network of ``x``."""
    k_1, k_2 = jax.random.split(jax.random.key(0))  # the teacher is the same for every call
    w1 = jax.random.normal(k_1, (FEATURES, 32)) / FEATURES**0.5
    w2 = jax.random.normal(k_2, (32, CLASSES))
    x = jax.random.normal(key, (n, FEATURES))
    return x, jnp.argmax(jnp.tanh(0.5 * x @ w1) @ w2, axis=-1)


def train(x: jax.Array, y: jax.Array, steps: int = 1000) -> dict:
    model = MLP()
    params = model.init(jax.random.key(1), x[:1])
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params: dict, state: optax.OptState, xb: jax.Array, yb: jax.Array) -> tuple:
        def loss_fn(p: dict) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    for i in range(steps):
        sl = slice((i * 256) % x.shape[0], (i * 256) % x.shape[0] + 256)
        params, state, loss = step(params, state, x[sl], y[sl])
    print(f"trained float32 MLP for {steps} steps, last batch loss {float(loss):.4f}")
    return params


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stdout)
    t0 = time.perf_counter()
    x_train, y_train = make_data(jax.random.key(2), 65536)
    x_test, y_test = make_data(jax.random.key(3), 8192)
    params = train(x_train, y_train)

    # bf16 baseline: the same weights cast to bfloat16, bf16 compute.
    params_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    bf16_model = MLP(dtype=jnp.bfloat16)

    # MXFP8: quantize every quantizable nn.Dense kernel; skipped layers stay nn.Dense.
    params_mx, report = quantize_params(params)
    print(report)
    converted = frozenset(c.path.rsplit("/", 1)[-1] for c in report.converted)
    mx_model = MLP(mxfp8=converted, dtype=jnp.bfloat16)

    results = {}
    for name, model, p in [
        ("float32", MLP(), params),
        ("bfloat16", bf16_model, params_bf16),
        ("mxfp8", mx_model, params_mx),
    ]:
        logits = jax.jit(model.apply)(p, x_test)
        results[name] = logits
        acc = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
        nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(p))
        print(f"{name:>9}: test accuracy {acc:.4f}  params {nbytes / 1024:7.1f} KiB")
    agree = float(jnp.mean(jnp.argmax(results["mxfp8"], -1) == jnp.argmax(results["bfloat16"], -1)))
    print(f"mxfp8 vs bf16 prediction agreement {agree:.4f}")
    for name in ("bfloat16", "mxfp8"):
        diff = jnp.abs(results[name] - results["float32"])
        print(f"{name:>9}: |logit - float32 logit| mean {float(diff.mean()):.4f} max {float(diff.max()):.4f}")
    print(f"total time {time.perf_counter() - t0:.1f} s on {jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
