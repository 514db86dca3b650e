"""Tensor-parallel MXFP8 layers and the tensor-parallel Llama example on 8 CPU devices; gradients on Explicit
mesh axes, and products inside a user's shard_map that checks varying axes, on 4.

The cases live in tests/sharding_cases.py (the MLP: 1x8, 2x4, 8x1 meshes, emulation and torch backends),
tests/llama_sharding_cases.py (the Llama example on the ModelOpt fixture), tests/explicit_sharding_cases.py and
tests/varying_axes_cases.py, and run in subprocesses, because ``--xla_force_host_platform_device_count`` must be set
before jax initializes.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURE_DIR, subprocess_env

HERE = Path(__file__).resolve().parent


def run_cases(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *args], env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK"), proc.stdout
    return proc.stdout


def test_explicit_mesh_axes_in_a_process_with_4_cpu_devices():
    """On jax.make_mesh's default Explicit axes: data-, column- and row-parallel layers in train and inference mode
    (row-parallel with out_sharding), their gradients split as their primals (the straight-through products are told
    the primals' shardings, as JAX's dot transpose is), the hopper backend's kernels run shard by shard, the layouts
    a review found broken (a split sequence axis, a FlashInferWeight, eager vmap, no mesh context, add-and-norm with
    a K split, an Auto axis beside an Explicit one), train mode's second derivatives on three layouts, and clear
    errors for splits that cannot work."""
    out = run_cases("explicit_sharding_cases.py")
    assert out.count("equal to the unsharded one") == 26
    assert out.count("equal to emulation") == 8
    assert out.count("error: ") == 5


def test_a_users_shard_map_with_check_vma_in_a_process_with_4_cpu_devices():
    """Inside ``jax.shard_map``'s default ``check_vma=True``: the emulation and torch backends' products, the
    add-norm product, train mode, train-mode NNX and Linen layers, and a product split over an Explicit axis inside
    a shard_map manual over another equal the unsharded ones, forward and gradients (a replicated kernel's summed
    over the data axis by JAX), and train mode's second derivatives; every hopper route traces with its outputs and
    gradients typed as varying; and a per-device result returned as replicated is refused on every backend."""
    out = run_cases("varying_axes_cases.py")
    assert out.count("equal to the unsharded one") == 21
    assert out.count("typed as varying") == 6
    assert out.count("as replicated refused") == 9


def test_sharded_cases_in_a_process_with_8_cpu_devices():
    assert run_cases("sharding_cases.py").count("MLP rel err") == 8


@pytest.mark.skipif(not FIXTURE_DIR.is_dir(), reason=f"fixture directory {FIXTURE_DIR} is absent")
def test_tensor_parallel_llama_in_a_process_with_8_cpu_devices():
    out = run_cases("llama_sharding_cases.py", str(FIXTURE_DIR))
    assert out.count("logits rel diff") == 5
    assert "greedy ids with the KV cache identical" in out
    assert out.count("cannot be split") == 5
