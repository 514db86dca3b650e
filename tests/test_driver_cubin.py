"""benchmarks/driver_cubin.py on CPU: without the CUDA driver it says what it needs (the compile itself runs on the
device)."""

import ctypes
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import driver_cubin  # noqa: E402


def test_without_libcuda_the_error_names_the_driver(monkeypatch):
    def missing(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    with pytest.raises(RuntimeError, match=r"needs the CUDA driver \(libcuda.so.1\), on the device machine"):
        driver_cubin.driver()
