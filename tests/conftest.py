import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp  # noqa: E402  (after JAX_PLATFORMS)

from mxfp8_xla.backends.select import Capability  # noqa: E402

H100 = Capability(platform="gpu", device_kind="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))
"""An SM90 GPU as ``override_capability`` sees it (for tracing the hopper backend on CPU)."""

ADD_NORM_KERNELS = [
    (jnp.bfloat16, jnp.bfloat16, "addnorm"),
    (jnp.bfloat16, jnp.float32, "addnorm_nf32"),
    (jnp.float32, jnp.float32, "addnorm_xf32"),
    (jnp.float32, jnp.bfloat16, "addnorm_xf32_nbf16"),
]
"""(row dtype, norm weight dtype, name): the hopper backend's add-and-norm kernel for the pair is
``mxfp8_gemv_split_c1_r4_{name}_{bf16 or f32 output}``."""

FIXTURE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "modelopt_tiny_llama_mxfp8"
REPO = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """The environment for a test's Python subprocess: JAX on CPU, and this checkout and ``tests/`` importable
    whether or not the package is installed (a subprocess does not inherit pytest's ``sys.path``)."""
    path = [str(REPO), str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


needs_gpp = pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ preprocessor")


def cuda_kernel_names(source: Path, prefix: str, *defines: str) -> set[str]:
    """The ``extern "C"`` kernels named ``prefix...`` that a CUDA source defines, read off its preprocessed text."""
    cuda = ["-D__global__=", "-D__device__=", "-D__forceinline__=", *(f"-D{d}" for d in defines)]
    expanded = subprocess.run(
        ["g++", "-E", "-P", "-x", "c++", *cuda, str(source)], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(rf"({prefix}\w+)\(", expanded))
