"""``quantize_params`` (Linen trees) and ``quantize_module`` (NNX): selection, skips, report, math."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from flax import nnx
from jax.sharding import PartitionSpec as P

from mxfp8_xla.flax import (
    ConversionReport,
    MXFP8Dense,
    MXFP8Linear,
    quantize_module,
    quantize_params,
    swizzle_params,
)

KEY = jax.random.key(0)
X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 48)), jnp.float32)


def shapes_dtypes(tree: Any) -> Any:
    return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


class Net(nn.Module):
    """embed (K=48: cannot be quantized) -> norm -> hidden (K=64) -> head (K=64)."""

    kinds: tuple[str, str, str]  # per layer: "dense", "train" or "inference"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def layer(kind: str, n: int, name: str) -> nn.Module:
            if kind == "dense":
                return nn.Dense(n, bias_init=nn.initializers.normal(0.5), name=name)
            return MXFP8Dense(n, mode=kind, bias_init=nn.initializers.normal(0.5), name=name)

        h = nn.relu(layer(self.kinds[0], 64, "embed")(x))
        h = nn.LayerNorm(name="norm")(h)
        h = nn.relu(layer(self.kinds[1], 64, "hidden")(h))
        return layer(self.kinds[2], 10, "head")(h)


@pytest.fixture(scope="module")
def dense_vars() -> Any:
    return jax.jit(Net(("dense",) * 3).init)(KEY, X)


def test_quantize_params_converts_skips_logs_and_reports(dense_vars: Any, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="mxfp8_xla.flax"):
        q, report = quantize_params(dense_vars)
    assert sorted(c.path for c in report.converted) == ["params/head", "params/hidden"]
    assert [s.path for s in report.skipped] == ["params/embed"]
    assert "K = 48 is not a multiple of 32" in report.skipped[0].reason
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "params/embed" in record.getMessage() and "K = 48 is not a multiple of 32" in record.getMessage()
    # Bytes: float32 kernels [64, 64] and [64, 10] -> 1 + 1/32 bytes per element.
    assert (report.bytes_before, report.bytes_after) == (4 * (4096 + 640), (4096 + 128) + (640 + 20))
    assert report.bytes_saved == report.bytes_before - report.bytes_after
    assert "converted 2 layer(s), skipped 1" in str(report)

    p, qp = dense_vars["params"], q["params"]
    assert qp["embed"]["kernel"] is p["embed"]["kernel"] and qp["norm"]["scale"] is p["norm"]["scale"]
    assert shapes_dtypes(qp["hidden"]) == {
        "kernel_q": ((64, 64), "float8_e4m3fn"),
        "kernel_scale": ((64, 2), "uint8"),
        "bias": ((64,), "float32"),
    }
    elements, scale = ref.quantize_values(np.asarray(p["head"]["kernel"]), axis=0)
    np.testing.assert_array_equal(np.asarray(qp["head"]["kernel_q"], np.float64), elements)
    np.testing.assert_array_equal(np.asarray(qp["head"]["kernel_scale"]), scale)
    np.testing.assert_array_equal(qp["head"]["bias"], p["head"]["bias"])
    assert "kernel" in p["hidden"]  # the input is not modified

    # The converted tree is what the mixed model (nn.Dense where skipped) expects, and its
    # output equals train-mode MXFP8Dense on the original weights bit for bit.
    mixed = Net(("dense", "inference", "inference"))
    assert shapes_dtypes(jax.eval_shape(mixed.init, KEY, X)) == shapes_dtypes(q)
    y_q = jax.jit(mixed.apply)(q, X)
    y_train = jax.jit(Net(("dense", "train", "train")).apply)(dense_vars, X)
    np.testing.assert_array_equal(y_q, y_train)


def test_include_exclude_globs(dense_vars: Any, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="mxfp8_xla.flax"):
        _, report = quantize_params(dense_vars, exclude="*head")
    assert [c.path for c in report.converted] == ["params/hidden"]
    assert {s.path: s.reason for s in report.skipped}["params/head"] == "path matched by exclude pattern '*head'"
    assert any(r.levelno == logging.INFO and "params/head" in r.getMessage() for r in caplog.records)

    q, report = quantize_params(dense_vars["params"], include=["head", "nothing/*"])
    assert [c.path for c in report.converted] == ["head"]
    assert "kernel" in q["hidden"] and "kernel_q" in q["head"]
    assert "not matched by include" in {s.path: s.reason for s in report.skipped}["hidden"]


def test_non_dense_nodes_are_left_alone_or_skipped_with_reason() -> None:
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 32, 8)), "bias": jnp.ones(8)},
        "custom": {"kernel": jnp.ones((32, 8)), "gate": jnp.ones(8)},
        "embed": {"embedding": jnp.ones((100, 32))},
        "half": {"kernel": jnp.ones((32, 8), jnp.bfloat16)},
        "ints": {"kernel": jnp.ones((32, 8), jnp.int32)},
    }
    q, report = quantize_params(params)
    assert [c.path for c in report.converted] == ["half"]
    assert report.converted[0].bytes_before == 32 * 8 * 2
    reasons = {s.path: s.reason for s in report.skipped}
    assert "not a 2-D [K, N] Dense kernel" in reasons["conv"]
    assert "besides kernel/bias" in reasons["custom"]
    assert "dtype int32" in reasons["ints"]
    assert q["embed"]["embedding"] is params["embed"]["embedding"]
    assert q["conv"]["kernel"] is params["conv"]["kernel"] and q["custom"]["gate"] is params["custom"]["gate"]
    with jax.enable_x64(True):
        _, report = quantize_params({"d": {"kernel": jnp.ones((32, 8), jnp.float64)}})
    assert "dtype float64" in report.skipped[0].reason


class NNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Linear(48, 64, rngs=rngs)
        self.norm = nnx.LayerNorm(64, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(64, 64, rngs=rngs) for _ in range(2)])
        self.head = nnx.Sequential(nnx.Linear(64, 10, rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm(nnx.relu(self.embed(x)))
        for block in self.blocks:
            h = nnx.relu(block(h))
        return self.head(h)


@nnx.jit
def call(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


def test_quantize_module_replaces_linear_layers_in_place(caplog: Any) -> None:
    model = NNet(nnx.Rngs(0))
    reference = nnx.clone(model)  # the same weights in train-mode MXFP8Linear layers
    reference.blocks[0] = MXFP8Linear.from_linear(reference.blocks[0], mode="train")
    reference.blocks[1] = MXFP8Linear.from_linear(reference.blocks[1], mode="train")
    reference.head.layers[0] = MXFP8Linear.from_linear(reference.head.layers[0], mode="train")
    head_kernel = np.asarray(model.head.layers[0].kernel[...])

    with caplog.at_level(logging.INFO, logger="mxfp8_xla.flax"):
        report = quantize_module(model)
    assert isinstance(report, ConversionReport)
    assert [c.path for c in report.converted] == ["blocks/0", "blocks/1", "head/layers/0"]
    assert [s.path for s in report.skipped] == ["embed"]
    assert any("'embed'" in r.getMessage() and "K = 48" in r.getMessage() for r in caplog.records)
    assert report.bytes_saved == 4 * (2 * 4096 + 640) - (2 * (4096 + 128) + 640 + 20)
    assert type(model.embed) is nnx.Linear
    assert all(type(m) is MXFP8Linear and m.mode == "inference" for m in [*model.blocks, model.head.layers[0]])

    head = model.head.layers[0]
    elements, scale = ref.quantize_values(head_kernel, axis=0)
    np.testing.assert_array_equal(np.asarray(head.kernel_q[...], np.float64), elements)
    np.testing.assert_array_equal(np.asarray(head.kernel_scale[...]), scale)
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert shapes_dtypes(state["blocks"][0]) == {
        "kernel_q": ((64, 64), "float8_e4m3fn"),
        "kernel_scale": ((64, 2), "uint8"),
        "bias": ((64,), "float32"),
    }
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 48)), jnp.float32)
    np.testing.assert_array_equal(call(model, x), call(reference, x))


def test_quantize_module_selection_and_unconvertible_layers() -> None:
    model = NNet(nnx.Rngs(0))
    report = quantize_module(model, include="blocks/*", exclude="*/1")
    assert [c.path for c in report.converted] == ["blocks/0"]
    assert type(model.blocks[1]) is nnx.Linear and type(model.head.layers[0]) is nnx.Linear
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons["blocks/1"] == "path matched by exclude pattern '*/1'"

    root = nnx.Linear(64, 8, rngs=nnx.Rngs(0))
    assert "MXFP8Linear.from_linear" in quantize_module(root).skipped[0].reason
    assert type(root) is nnx.Linear

    class Wide(nnx.Module):
        def __init__(self) -> None:
            self.fc = nnx.Linear(64, 8, param_dtype=jnp.float64, rngs=nnx.Rngs(0))

    with warnings.catch_warnings():  # "float64 is not available" (x64 is off): arrays are float32
        warnings.simplefilter("ignore", UserWarning)
        wide = Wide()
    report = quantize_module(wide)
    assert not report.converted and "float64" in report.skipped[0].reason
    assert type(wide.fc) is nnx.Linear


def test_quantize_module_points_stacked_layers_to_vmapped_from_linear() -> None:
    """Linears stacked by nnx.vmap are skipped with the way to convert them (quantize_module has no `stacked`), and
    that way works: each layer of nnx.vmap(lambda layer: MXFP8Linear.from_linear(layer)) equals it converted alone."""

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key: jax.Array) -> nnx.Linear:
        return nnx.Linear(64, 32, rngs=nnx.Rngs(key))

    class Stack(nnx.Module):
        def __init__(self) -> None:
            self.layers = make(jax.random.split(jax.random.key(0), 3))

    model = Stack()
    report = quantize_module(model)
    assert report.skipped[0].reason == (
        "kernel has shape (3, 64, 32): not a 2-D [K, N] Dense kernel (for layers stacked by a vmap or scan, "
        "nnx.vmap(lambda layer: MXFP8Linear.from_linear(layer)) converts them)"
    )
    stacked = nnx.vmap(lambda layer: MXFP8Linear.from_linear(layer))(model.layers)
    x = jax.random.normal(jax.random.key(1), (5, 64))
    one = MXFP8Linear.from_linear(nnx.Linear(64, 32, rngs=nnx.Rngs(jax.random.split(jax.random.key(0), 3)[1])))
    np.testing.assert_array_equal(stacked.kernel_q[...][1], one.kernel_q[...])
    np.testing.assert_array_equal(nnx.vmap(lambda m: m(x), in_axes=0)(stacked)[1], one(x))


def test_quantize_module_refuses_an_abstract_model_by_name() -> None:
    abstract = nnx.eval_shape(lambda: NNet(nnx.Rngs(0)))
    with pytest.raises(TypeError, match=r"^quantize_module: the nnx.Linear at 'blocks/0' is abstract \(kernel "):
        quantize_module(abstract)

    def converted() -> NNet:
        model = NNet(nnx.Rngs(0))
        quantize_module(model)
        return model

    assert nnx.eval_shape(converted).blocks[0].kernel_q.get_value().dtype == jnp.float8_e4m3fn


class Shared(nnx.Module):
    """The audit's reproducer: one Linear under two attributes."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.proj = nnx.Linear(64, 64, rngs=rngs)
        self.alias = self.proj

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class Single(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.proj = nnx.Linear(64, 64, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


def test_a_shared_linear_is_converted_once_and_stays_shared(caplog: Any) -> None:
    model, single = Shared(nnx.Rngs(0)), Single(nnx.Rngs(0))
    np.testing.assert_array_equal(model.proj.kernel[...], single.proj.kernel[...])
    with caplog.at_level(logging.INFO, logger="mxfp8_xla.flax"):
        report = quantize_module(model)
    assert not caplog.records
    assert type(model.proj) is MXFP8Linear and model.proj is model.alias
    assert [(c.path, c.aliases) for c in report.converted] == [("alias", ("proj",))]  # NNX's order: keys sorted
    assert report.skipped == [] and report.bytes_after == 4096 + 128  # one kernel, counted once
    assert "converted alias (also proj): kernel [64, 64] float32" in str(report)
    single_report = quantize_module(single)
    assert report.bytes_saved == single_report.bytes_saved
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 64)), jnp.float32)
    np.testing.assert_array_equal(call(model, x), call(single, x))


def test_shared_linears_in_containers_and_shared_parents() -> None:
    class Tied(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.proj = nnx.Linear(64, 64, rngs=rngs)
            self.heads = nnx.Dict(a=self.proj)
            block = nnx.Sequential(nnx.Linear(64, 64, rngs=rngs))
            self.blocks = nnx.List([block, block, self.proj])
            self.frozen = nnx.data((nnx.Linear(64, 64, rngs=rngs),))

    model = Tied(nnx.Rngs(0))
    report = quantize_module(model)
    assert [(c.path, c.aliases) for c in report.converted] == [
        ("blocks/0/layers/0", ("blocks/1/layers/0",)),
        ("blocks/2", ("heads/a", "proj")),
    ]
    assert type(model.proj) is MXFP8Linear and model.proj is model.heads["a"] is model.blocks[2]
    assert model.blocks[0] is model.blocks[1] and type(model.blocks[0].layers[0]) is MXFP8Linear
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("frozen/0", "held at 'frozen/0' by a tuple, not changeable in place")
    ]
    assert type(model.frozen[0]) is nnx.Linear


def test_a_shared_linear_selected_at_one_path_only_is_refused() -> None:
    model = Shared(nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"shared by paths \['alias', 'proj'\] is selected at 'proj' but not at 'alias' "
        r"\(path matched by exclude pattern 'alias'\)",
    ):
        quantize_module(model, exclude="alias")
    with pytest.raises(ValueError, match=r"selected at 'proj' but not at 'alias' \(path not matched by include"):
        quantize_module(model, include="proj")
    assert type(model.proj) is nnx.Linear and model.proj is model.alias  # nothing was changed
    report = quantize_module(model, exclude=("proj", "alias"))  # every path deselected: skipped once
    assert [(s.path, s.aliases) for s in report.skipped] == [("alias", ("proj",))] and not report.converted


def test_swizzled_scales_give_the_same_outputs_in_linen_and_nnx(dense_vars: Any) -> None:
    """Inference layers take kernel_scale as [N, K/32] or, after swizzle_params, in FlashInfer's 1-D layout: the
    same numbers on every backend (here emulation), and the mapping keeps everything else."""
    q, _ = quantize_params(dense_vars)
    sw = swizzle_params(q)
    assert sw["params"]["hidden"]["kernel_scale"].shape == (128 * 4,)  # [64, 2] padded to 128 x 4
    assert sw["params"]["head"]["kernel_scale"].shape == (128 * 4,)
    assert sw["params"]["norm"].keys() == q["params"]["norm"].keys()  # everything else as it was
    assert q["params"]["hidden"]["kernel_scale"].shape == (64, 2)  # the input is not modified
    model = Net(("dense", "inference", "inference"))
    np.testing.assert_array_equal(jax.jit(model.apply)(sw, X), jax.jit(model.apply)(q, X))

    linear = MXFP8Linear(64, 16, rngs=nnx.Rngs(0))
    h = jnp.asarray(np.random.default_rng(1).standard_normal((3, 64)), jnp.float32)
    before = linear(h)
    state = nnx.state(linear, nnx.Param)
    nnx.replace_by_pure_dict(state, swizzle_params(nnx.to_pure_dict(state)))
    nnx.update(linear, state)
    assert linear.kernel_scale[...].shape == (128 * 4,)
    np.testing.assert_array_equal(linear(h), before)


def test_a_kernel_scale_of_neither_layout_is_refused(dense_vars: Any) -> None:
    q, _ = quantize_params(dense_vars)
    q["params"]["hidden"]["kernel_scale"] = jnp.zeros((100,), jnp.uint8)
    with pytest.raises(
        ValueError,
        match=r"MXFP8Dense at 'hidden'.*'kernel_scale' has shape \(100,\).*expected shape \(64, 2\) \(\[N, K/32\]\) "
        r"or \(512,\) \(FlashInfer's 1-D",
    ):
        Net(("dense", "inference", "inference")).apply(q, X)


def test_a_top_level_input_that_is_not_a_params_mapping_is_refused(dense_vars: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"quantize_params expects a params mapping \(Linen's variables\['params'\], or the whole variables "
        r"dict\), got list \[1, 2\]",
    ):
        quantize_params([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"swizzle_params expects a params mapping .*nnx.to_pure_dict.*got list \[1\]"):
        swizzle_params([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got ArrayImpl Array\("):
        quantize_params(dense_vars["params"]["hidden"]["kernel"])
    # Inside the mapping, leaves that are not mappings are kept as they are.
    tree = {"step": 3, "tags": ["a"], "params": dense_vars["params"]}
    q, report = quantize_params(tree)
    assert q["step"] == 3 and q["tags"] is tree["tags"] and len(report.converted) == 2
    sw = swizzle_params(q)
    assert sw["step"] == 3 and sw["tags"] is tree["tags"] and sw["params"]["hidden"]["kernel_scale"].ndim == 1


def test_swizzle_params_refuses_partitioned_scales_naming_the_layer() -> None:
    """A partitioned kernel_scale [N, K/32] cannot keep its 2-D names in the 1-D swizzled layout, and swizzle_params
    is for unsharded params: refused, naming the layer; unboxed, the same params swizzle."""
    init = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    v = MXFP8Dense(32, kernel_init=init).init(KEY, jnp.ones((2, 64)))
    with pytest.raises(
        ValueError,
        match=r"swizzle_params: layer 'params' has a kernel_scale boxed in Partitioned with names \('mlp', 'embed'\);"
        r".*unbox them first",
    ):
        swizzle_params(v)
    sw = swizzle_params(nn.meta.unbox(v))
    assert sw["params"]["kernel_scale"].shape == (128 * 4,)


def test_quantize_module_carries_partition_specs_transposed() -> None:
    """A model sharded with nnx.with_partitioning: each converted layer's kernel_q/kernel_scale get its Linear
    kernel's spec transposed and the bias keeps its spec, so nnx.get_partition_spec of the quantized model is the
    Linear specs with [K, N] read as [N, K] (names left off: None); the weights are those of the unannotated model
    bit for bit. A kernel whose out_sharding cannot be transposed is skipped with the reason, and the shared Linear
    stays shared."""

    class Sharded(nnx.Module):
        def __init__(self, annotate: bool, rngs: nnx.Rngs) -> None:
            def init(f: Any, names: tuple[str | None, ...]) -> Any:
                return nnx.with_partitioning(f, names) if annotate else f

            lecun, normal = nnx.initializers.lecun_normal(), nnx.initializers.normal(0.5)
            self.up = nnx.Linear(
                64, 128, kernel_init=init(lecun, ("embed", "mlp")), bias_init=init(normal, ("mlp",)), rngs=rngs
            )
            self.down = nnx.Linear(128, 64, kernel_init=init(lecun, ("mlp", "embed")), bias_init=normal, rngs=rngs)
            self.alias = self.down
            self.first = nnx.Linear(64, 64, kernel_init=init(lecun, ("embed",)), rngs=rngs)
            self.bad = nnx.Linear(64, 64, kernel_init=init(lecun, ("embed", "mlp")), rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.first(self.down(nnx.relu(self.up(x))))

    # Auto axes: with Explicit ones JAX asks the row-parallel matmul (down, K sharded on both operands) for an
    # out_sharding, which MXFP8Linear's call does not take (nnx.Linear's __call__ does).
    auto = (jax.sharding.AxisType.Auto,) * 2
    with jax.set_mesh(jax.make_mesh((1, 1), ("embed", "mlp"), axis_types=auto)):
        model = Sharded(True, nnx.Rngs(0))
    plain = Sharded(False, nnx.Rngs(0))
    before = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model, nnx.Param)))
    model.bad.kernel.set_metadata(out_sharding=("layers", "embed", "mlp"))  # 3 names for 2 axes
    report = quantize_module(model)
    quantize_module(plain)
    assert [c.path for c in report.converted] == ["alias", "first", "up"] and report.converted[0].aliases == ("down",)
    assert [s.path for s in report.skipped] == ["bad"]
    assert "kernel 'out_sharding' metadata ('layers', 'embed', 'mlp') names 3 axes" in report.skipped[0].reason
    assert type(model.bad) is nnx.Linear and model.alias is model.down
    after = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model, nnx.Param)))
    for name in ("up", "alias", "first"):  # the state has the shared layer under its first path
        spec = (*before[name]["kernel"], None)
        assert after[name] == {
            "kernel_q": P(spec[1], spec[0]),
            "kernel_scale": P(spec[1], spec[0]),
            "bias": before[name]["bias"],
        }
    assert after["up"]["kernel_scale"] == P("mlp", "embed") and after["up"]["bias"] == P("mlp")
    assert after["alias"]["kernel_q"] == P("embed", "mlp") and after["first"]["kernel_q"] == P(None, "embed")
    for name in ("up", "alias", "first"):
        for param in ("kernel_q", "kernel_scale", "bias"):
            a, b = (np.asarray(getattr(getattr(m, name), param)[...]) for m in (model, plain))
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 64)), jnp.float32)
    np.testing.assert_array_equal(call(model, x), call(plain, x))
