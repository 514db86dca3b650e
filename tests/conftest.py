import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from mxfp8_xla.backends.select import Capability  # noqa: E402  (after JAX_PLATFORMS)

H100 = Capability(platform="gpu", device_kind="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))
"""An SM90 GPU as ``override_capability`` sees it (for tracing the hopper backend on CPU)."""

FIXTURE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "modelopt_tiny_llama_mxfp8"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
