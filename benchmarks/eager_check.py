"""The public entry points of the `hopper` backend called eagerly (no ``jax.jit``), against the same calls under jit.

Until the twenty-fifth session the CUDA kernels' launch (1-8 rows) had no eager rule and raised
``NotImplementedError``; this checks ``mxfp8_matmul`` and ``add_rms_norm_matmul`` at 1, 2 and 8 rows of a
(14336, 4096) weight, bit for bit. (Run as an inline script in that session's call 5, then saved here.)

    PYTHONPATH=. python3 benchmarks/eager_check.py

Exits 1 on a mismatch.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import mxfp8_xla as mx

w = mx.quantize(jax.random.normal(jax.random.key(0), (14336, 4096)) * 0.05)
nw = jnp.ones((4096,), jnp.bfloat16)
mismatches = 0
for m in (1, 2, 8):
    x = jax.random.normal(jax.random.key(m), (m, 4096), jnp.bfloat16)
    eager = mx.mxfp8_matmul(x, w, backend="hopper")
    jitted = jax.jit(lambda x: mx.mxfp8_matmul(x, w, backend="hopper"))(x)
    ye, he = mx.add_rms_norm_matmul(x, x, nw, w, eps=1e-5, backend="hopper")
    yj, hj = jax.jit(lambda x: mx.add_rms_norm_matmul(x, x, nw, w, eps=1e-5, backend="hopper"))(x)
    same = lambda a, b: bool(np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32)))  # noqa: E731
    product, add_norm = same(eager, jitted), same(ye, yj) and same(he, hj)
    mismatches += (not product) + (not add_norm)
    print(m, "rows: mxfp8_matmul eager == jit:", product, "| add_rms_norm_matmul eager == jit:", add_norm)
sys.exit(1 if mismatches else 0)
