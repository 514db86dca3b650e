"""The straight-through MXFP8 linear op: forward math, gradients, transformations, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from mxfp8_xla import dequantize, mxfp8_matmul, quantize
from mxfp8_xla import ste as ste_module
from mxfp8_xla.ste import mxfp8_linear_ste

F32 = jnp.float32


def _data(seed: int, shape: tuple[int, ...], spread: float = 4.0) -> np.ndarray:
    """Normal values with per-element magnitudes spread over ``2**+-spread`` (float32)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2.0 ** rng.uniform(-spread, spread, shape)).astype(np.float32)


def ste(x: jax.Array, k: jax.Array, out_dtype: jnp.dtype = F32) -> jax.Array:
    return mxfp8_linear_ste(x, k, backend="emulation", out_dtype=out_dtype)


@pytest.mark.parametrize("xshape", [(64,), (5, 64), (2, 3, 64)])
def test_forward_matches_float64_numpy_reference(xshape: tuple[int, ...]) -> None:
    x, k = _data(0, xshape), _data(1, (64, 24))
    x[..., :32] = 0.0  # an all-zero block: scale byte 0
    for fn in (ste, jax.jit(ste)):
        y = np.asarray(fn(jnp.asarray(x), jnp.asarray(k)), np.float64)
        assert y.shape == (*xshape[:-1], 24)
        np.testing.assert_array_less(np.abs(y - ref.linear(x, k)), ref.linear_tolerance(x, k))


def test_forward_is_quantize_then_mxfp8_matmul_bit_for_bit() -> None:
    x, k = jnp.asarray(_data(2, (7, 96))), jnp.asarray(_data(3, (96, 40)))
    for out_dtype in (jnp.float32, jnp.bfloat16):
        expected = jax.jit(lambda x, k, dt=out_dtype: mxfp8_matmul(quantize(x), quantize(k, axis=0), out_dtype=dt))(
            x, k
        )
        got = jax.jit(ste, static_argnums=2)(x, k, out_dtype)
        assert got.dtype == out_dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))


def test_gradients_are_float32_matmuls_of_dequantized_operands() -> None:
    x, k, g = _data(4, (3, 5, 64)), _data(5, (64, 16)), _data(6, (3, 5, 16))
    y, vjp = jax.vjp(ste, jnp.asarray(x), jnp.asarray(k))
    dx, dk = (np.asarray(a, np.float64) for a in jax.jit(vjp)(jnp.asarray(g)))
    xd = ref.dequantize_values(*ref.quantize_values(x))  # [3, 5, 64]
    wd = ref.dequantize_values(*ref.quantize_values(k, axis=0))  # [16, 64]
    g64 = g.astype(np.float64)
    dx_ref = g64 @ wd
    dk_ref = xd.reshape(-1, 64).T @ g64.reshape(-1, 16)
    tol = 2.0**-21
    np.testing.assert_array_less(np.abs(dx - dx_ref), tol * (np.abs(g64) @ np.abs(wd)) + 1e-30)
    np.testing.assert_array_less(
        np.abs(dk - dk_ref), tol * (np.abs(xd).reshape(-1, 64).T @ np.abs(g64).reshape(-1, 16)) + 1e-30
    )
    # Straight-through, not the plain gradient of the unquantized matmul:
    assert not np.allclose(dx, g64 @ k.astype(np.float64).T, rtol=1e-6, atol=0)


@pytest.mark.parametrize("g_dtype", [jnp.bfloat16, jnp.float32])
def test_kernel_gradient_of_a_bf16_cotangent_is_the_float32_product(g_dtype) -> None:
    """A bf16 cotangent multiplies the decoded activation in bf16 (exactly representable) with float32
    accumulation: the same terms as the float32 product, so within float32's accumulation bound of float64."""
    x, k = _data(11, (40, 64)), _data(12, (64, 16))
    y, vjp = jax.vjp(lambda a, b: ste(a, b, g_dtype), jnp.asarray(x), jnp.asarray(k))
    g = jnp.asarray(_data(13, (40, 16)), g_dtype)
    for fn in (vjp, jax.jit(vjp)):
        dk = np.asarray(fn(g)[1], np.float64)
        xd = ref.dequantize_values(*ref.quantize_values(x)).reshape(-1, 64)
        g64 = np.asarray(g, np.float64)
        bound = 40 * 2.0**-24 * (np.abs(xd).T @ np.abs(g64)) + 2.0**-24 * np.abs(xd.T @ g64) + 1e-30
        np.testing.assert_array_less(np.abs(dk - xd.T @ g64), bound)


def test_gradient_dtypes_follow_primal_dtypes_and_residuals_are_the_quantized_operands_and_inputs() -> None:
    """The residuals are the quantized operands, plus x and kernel themselves (the caller's buffers, not copies:
    only second derivatives read them)."""
    x = jnp.asarray(_data(7, (4, 64)), jnp.bfloat16)
    k = jnp.asarray(_data(8, (64, 8)), jnp.float16)
    y, vjp = jax.vjp(lambda a, b: ste(a, b, jnp.bfloat16), x, k)
    dx, dk = vjp(jnp.ones_like(y))
    assert (dx.dtype, dk.dtype) == (jnp.bfloat16, jnp.float16)
    big = [leaf for leaf in jax.tree.leaves(vjp) if leaf.size > 0]
    new = [leaf for leaf in big if leaf.unsafe_buffer_pointer() not in {a.unsafe_buffer_pointer() for a in (x, k)}]
    assert len(big) == len(new) + 2
    assert sorted((str(a.dtype), a.shape) for a in new) == [
        ("float8_e4m3fn", (4, 64)),
        ("float8_e4m3fn", (8, 64)),
        ("uint8", (4, 2)),
        ("uint8", (8, 2)),
    ]


@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_second_derivatives_are_those_of_the_dequantized_float_product(out_dtype) -> None:
    """grad of grad (a Hessian-vector product) of sum(y^2), y = ste(x, k), in every direction (x, kernel, both):
    the straight-through ones, y = x_hat @ w_hat.T with x_hat and w_hat moving as x and k do, from float64 NumPy."""
    x, k = _data(22, (8, 128), spread=1.0), _data(23, (128, 64), spread=1.0) / 8
    xd = ref.dequantize_values(*ref.quantize_values(x))  # [8, 128]
    wd = ref.dequantize_values(*ref.quantize_values(k, axis=0))  # [64, 128]
    y = xd @ wd.T

    def loss(x: jax.Array, k: jax.Array) -> jax.Array:
        return jnp.sum(ste(x, k, out_dtype).astype(F32) ** 2)

    # bf16 outputs: the roundings of y, its cotangent and the tangents to bf16, each at most 2^-9 relative; float32
    # accumulation otherwise.
    tol = 2.0**-7 if out_dtype == jnp.bfloat16 else 1e-5
    directions = [
        (_data(24, x.shape, spread=1.0), np.zeros_like(k)),
        (np.zeros_like(x), _data(25, k.shape, spread=1.0) / 8),
        (_data(26, x.shape, spread=1.0), _data(27, k.shape, spread=1.0) / 8),
    ]
    for v_x, v_k in directions:
        y_dot = v_x @ wd.T + xd @ v_k  # [8, 64]
        want_x = 2 * (y_dot @ wd + y @ v_k.T)
        want_k = 2 * (v_x.T @ y + xd.T @ y_dot)

        def hvp(x: jax.Array, k: jax.Array, v_x=v_x, v_k=v_k) -> tuple[jax.Array, jax.Array]:
            def along_v(x: jax.Array, k: jax.Array) -> jax.Array:
                g_x, g_k = jax.grad(loss, (0, 1))(x, k)
                return jnp.vdot(g_x, v_x) + jnp.vdot(g_k, v_k)

            return jax.grad(along_v, (0, 1))(x, k)

        for fn in (hvp, jax.jit(hvp)):
            for got, want in zip(fn(jnp.asarray(x), jnp.asarray(k)), (want_x, want_k), strict=True):
                got = np.asarray(got, np.float64)
                assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want)), out_dtype


def _two_layers(x: jax.Array, ks: jax.Array, loop: str) -> jax.Array:
    """sum(h^2) after two layers h = tanh(ste(h, k)), unrolled or in one of JAX's loops."""
    layer = lambda h, k: jnp.tanh(ste(h, k))  # noqa: E731
    if loop == "unrolled":
        h = layer(layer(x, ks[0]), ks[1])
    elif loop == "scan":
        h = jax.lax.scan(lambda h, k: (layer(h, k), None), x, ks)[0]
    elif loop == "scan, remat":
        h = jax.lax.scan(jax.checkpoint(lambda h, k: (layer(h, k), None)), x, ks)[0]
    else:  # fori_loop
        h = jax.lax.fori_loop(0, 2, lambda i, h: layer(h, ks[i]), x)
    return jnp.sum(h**2)


def _hvp(loss, x: jax.Array, ks: jax.Array, v_x: jax.Array, v_ks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """grad of grad: the Hessian of ``loss`` times ``(v_x, v_ks)``, reverse over reverse."""

    def along_v(x: jax.Array, ks: jax.Array) -> jax.Array:
        g_x, g_ks = jax.grad(loss, (0, 1))(x, ks)
        return jnp.vdot(g_x, v_x) + jnp.vdot(g_ks, v_ks)

    return jax.grad(along_v, (0, 1))(x, ks)


@pytest.mark.parametrize("loop", ["scan", "scan, remat", "fori_loop"])
def test_second_derivatives_inside_loops_equal_the_unrolled_ones(loop: str) -> None:
    """Inside lax.scan and fori_loop (whose differentiation drops a custom_jvp's rule on jax < 0.12, so there the
    forward rule's tangent is a custom_vjp) the Hessian-vector product equals the unrolled one."""
    x, ks = jnp.asarray(_data(30, (8, 64), spread=1.0)), jnp.asarray(_data(31, (2, 64, 64), spread=1.0) / 8)
    v_x, v_ks = jnp.asarray(_data(32, (8, 64), spread=1.0)), jnp.asarray(_data(33, (2, 64, 64), spread=1.0) / 8)
    want = _hvp(functools.partial(_two_layers, loop="unrolled"), x, ks, v_x, v_ks)
    got = jax.jit(_hvp, static_argnums=0)(functools.partial(_two_layers, loop=loop), x, ks, v_x, v_ks)
    for g, w in zip(got, want, strict=True):
        assert float(jnp.max(jnp.abs(w))) > 0
        assert float(jnp.max(jnp.abs(g - w))) <= 1e-5 * float(jnp.max(jnp.abs(w))), loop


def test_forward_over_reverse_second_derivatives_where_jax_keeps_custom_jvp_rules() -> None:
    """jax.hessian (forward over reverse) on jax >= 0.12 equals grad of grad; on older JAX it raises JAX's error for
    forward-mode autodiff of a custom_vjp, never a wrong number."""
    x, ks = jnp.asarray(_data(34, (2, 32), spread=1.0)), jnp.asarray(_data(35, (2, 32, 32), spread=1.0) / 8)
    v_x = jnp.asarray(_data(36, (2, 32), spread=1.0))
    loss = functools.partial(_two_layers, loop="scan")
    if not ste_module.KEEPS_CUSTOM_JVP_RULES:
        with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
            jax.hessian(loss)(x, ks)
        return
    hessian_v = jnp.einsum("ijkl,kl->ij", jax.hessian(loss)(x, ks), v_x)
    want = _hvp(loss, x, ks, v_x, jnp.zeros_like(ks))[0]
    assert float(jnp.max(jnp.abs(hessian_v - want))) <= 1e-5 * float(jnp.max(jnp.abs(want)))


def test_third_derivatives_are_those_of_the_dequantized_float_product() -> None:
    """d^3/dt^3 sum(y(x + t v, k + t u)^2) = 12 sum(A * B), with y = x_hat @ w_hat.T moving straight through,
    A = v @ w_hat.T + x_hat @ u and B = v @ u (float64 NumPy)."""
    x, k = _data(37, (8, 64), spread=1.0), _data(38, (64, 32), spread=1.0) / 8
    v, u = _data(39, x.shape, spread=1.0), _data(40, k.shape, spread=1.0) / 8
    xd = ref.dequantize_values(*ref.quantize_values(x))
    wd = ref.dequantize_values(*ref.quantize_values(k, axis=0))
    want = 12 * np.sum((v @ wd.T + xd @ u) * (v @ u))

    def along(f):
        def directional(x: jax.Array, k: jax.Array) -> jax.Array:
            g_x, g_k = jax.grad(f, (0, 1))(x, k)
            return jnp.vdot(g_x, v) + jnp.vdot(g_k, u)

        return directional

    loss = lambda x, k: jnp.sum(ste(x, k) ** 2)  # noqa: E731
    got = float(jax.jit(along(along(along(loss))))(jnp.asarray(x), jnp.asarray(k)))
    assert abs(got - want) <= 1e-5 * abs(want)


def test_jit_vmap_grad_remat_scan_agree() -> None:
    x, ks = jnp.asarray(_data(9, (6, 64))), jnp.asarray(_data(10, (3, 64, 64), spread=1.0) / 8)

    def loss(x: jax.Array, ks: jax.Array) -> jax.Array:
        h = x
        for i in range(ks.shape[0]):
            h = jax.nn.relu(ste(h, ks[i]))
        return jnp.sum(h**2)

    def loss_scan(x: jax.Array, ks: jax.Array) -> jax.Array:
        layer = jax.checkpoint(lambda h, k: (jax.nn.relu(ste(h, k)), None))
        h, _ = jax.lax.scan(layer, x, ks)
        return jnp.sum(h**2)

    g_unrolled = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, ks)
    g_scan_remat = jax.jit(jax.grad(loss_scan, argnums=(0, 1)))(x, ks)
    for a, b in zip(g_unrolled, g_scan_remat, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert all(bool(jnp.any(gk != 0)) for gk in g_unrolled[1])  # every layer gets a gradient

    # vmap over rows equals the batched call bit for bit; kernel grads sum over the vmapped axis.
    k = ks[0]
    y_rows = jax.vmap(lambda r: ste(r, k))(x)
    np.testing.assert_array_equal(np.asarray(y_rows), np.asarray(ste(x, k)))
    gk_vmapped = jax.jit(jax.grad(lambda k: jnp.sum(jax.vmap(lambda r: ste(r, k))(x))))(k)
    gk_batched = jax.jit(jax.grad(lambda k: jnp.sum(ste(x, k))))(k)
    np.testing.assert_allclose(np.asarray(gk_vmapped), np.asarray(gk_batched), rtol=1e-6, atol=1e-6)
    # vmap over a batch of kernels (both operands batched).
    y_k = jax.jit(jax.vmap(lambda kk: ste(x, kk)))(ks)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(y_k[i]), np.asarray(ste(x, ks[i])))


def test_eager_calls_compile_once_per_shape() -> None:
    """The custom_vjp's static argument compares equal across calls (the jnp quantizers are one object), so the
    jit behind eager calls hits its cache: a new static every call compiled every call (3.98 s for 20 calls)."""
    from mxfp8_xla import ste

    x, k = jnp.ones((8, 64)), jnp.ones((64, 32))
    mxfp8_linear_ste(x, k)
    before = ste._ste_jit._cache_size()
    for _ in range(3):
        mxfp8_linear_ste(x, k)
    assert ste._ste_jit._cache_size() == before


def test_identity_gradient_through_rounding() -> None:
    """With an all-ones cotangent, dkernel[k, n] is the sum over rows of dequantized x."""
    x, k = jnp.asarray(_data(11, (8, 32))), jnp.asarray(_data(12, (32, 3)))
    dk = jax.jit(jax.grad(lambda k: jnp.sum(ste(x, k))))(k)
    colsum = jax.jit(lambda x: jnp.sum(dequantize(quantize(x)), axis=0))(x)
    np.testing.assert_allclose(np.asarray(dk), np.broadcast_to(np.asarray(colsum)[:, None], (32, 3)), rtol=1e-6)


def test_errors_are_clear_and_raised_at_trace_time() -> None:
    x, k = jnp.ones((2, 64)), jnp.ones((64, 8))
    with pytest.raises(ValueError, match=r"last axis of x must equal K = 64"):
        jax.jit(ste)(jnp.ones((2, 32)), k)
    with pytest.raises(ValueError, match=r"multiple of 32"):
        jax.jit(ste)(jnp.ones((2, 48)), jnp.ones((48, 8)))
    with pytest.raises(ValueError, match=r"kernel must be 2-D \[K, N\], got shape \(2, 64, 8\)"):
        jax.jit(ste)(x, jnp.ones((2, 64, 8)))
    with pytest.raises(
        ValueError, match=r"K = 8 \(the kernel is \[K, N\]; this one looks like \[N, K\]: pass its transpose\)"
    ):
        ste(x, jnp.ones((8, 64)))  # [N, K], whose N = 8 is no multiple of 32: the shapes are named, not the block
    with pytest.raises(
        TypeError, match=r"^mxfp8_linear_ste: kernel must be an array \(jnp.asarray makes one\), got list"
    ):
        ste(x, [[1.0] * 8] * 64)
    with pytest.raises(TypeError, match=r"int32"):
        ste(x, jnp.ones((64, 8), jnp.int32))
    with jax.enable_x64(True), pytest.raises(TypeError, match=r"float64"):
        ste(jnp.ones((2, 64), jnp.float64), k)
