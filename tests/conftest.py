import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

FIXTURE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "modelopt_tiny_llama_mxfp8"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
