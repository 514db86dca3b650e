"""benchmarks/gemv_ab.py on CPU: its build arguments, and that the route it times traces with the build's PTX (the
timing itself needs the GPU)."""

import argparse
import sys
from pathlib import Path

import pytest
from conftest import H100

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gemv_ab  # noqa: E402
from mosaic_sweep import operands  # noqa: E402

from mxfp8_xla.backends import cuda_gemv, hopper, ptx_launch  # noqa: E402
from mxfp8_xla.backends.select import override_capability  # noqa: E402


def test_a_build_is_a_label_and_a_path():
    assert gemv_ab.parse_build("h1=ab_ptx/h1.ptx") == ("h1", Path("ab_ptx/h1.ptx"))


@pytest.mark.parametrize("spec", ["ab_ptx/h1.ptx", "=x.ptx", "h1="])
def test_a_build_without_a_label_or_a_path_is_refused(spec):
    with pytest.raises(argparse.ArgumentTypeError, match="expected LABEL=PATH"):
        gemv_ab.parse_build(spec)


def test_the_route_traces_with_the_builds_ptx_and_leaves_the_librarys_alone(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    x, w = operands(1024, 4096, 8, copies=1)[0]
    build = "// a variant build\n.visible .entry mxfp8_gemv_mma_r8_bf16(\n)\n"
    with override_capability(H100):
        ptx = [p["ptx"] for p in ptx_launch.traced_launch_params(gemv_ab.route_with(build), x, w)]
        library = [
            p["ptx"] for p in ptx_launch.traced_launch_params(gemv_ab.route_with(cuda_gemv.PTX.read_text()), x, w)
        ]
    assert len(ptx) == 1 and ptx[0].startswith("// a variant build") and "mxfp8_gemv_mma_r8_bf16(" in ptx[0]
    assert len(library) == 1 and library[0] != ptx[0] and cuda_gemv._ptx() == cuda_gemv.PTX.read_text()
