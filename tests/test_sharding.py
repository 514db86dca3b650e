"""Tensor-parallel MXFP8 layers on 8 CPU devices (1x8, 2x4, 8x1 meshes), emulation and torch backends.

The cases live in tests/sharding_cases.py and run in a subprocess, because
``--xla_force_host_platform_device_count`` must be set before jax initializes.
"""

import os
import subprocess
import sys
from pathlib import Path


def test_sharded_cases_in_a_process_with_8_cpu_devices():
    here = Path(__file__).resolve().parent
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(here.parent), str(here)]))
    proc = subprocess.run(
        [sys.executable, str(here / "sharding_cases.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK"), proc.stdout
    assert proc.stdout.count("MLP rel err") == 6
