"""The main benchmark scripts refuse bad options before any device work, and answer --help."""

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import timing  # noqa: E402

SCRIPTS = ("bench_gemm", "bench_quantize", "bench_bridge", "bench_llama")


def run_main(monkeypatch, script: str, *args: str) -> None:
    """``script.main()`` with ``args``, its device work replaced by an assertion: options are checked first."""
    module = importlib.import_module(script)

    def device_work(*_, **__):
        raise AssertionError(f"{script} started measuring before it checked its options")

    for name in ("environment", "copy_bandwidth", "run_section"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, device_work)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
    module.main()


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(monkeypatch, capsys, script):
    with pytest.raises(SystemExit) as e:
        run_main(monkeypatch, script, "--help")
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {script}.py")


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("bench_gemm", ["--shapes", "axb"], "argument --shapes: 'a' is not an integer"),
        ("bench_gemm", ["--shapes", "4096"], "argument --shapes: '4096' is not a weight shape NxK (e.g. 14336x4096)"),
        ("bench_gemm", ["--shapes", "64x48"], "'64x48': K = 48 is not a multiple of 32 (one MXFP8 block)"),
        ("bench_gemm", ["--ms", "1,-1"], "argument --ms: -1 is not a positive integer"),
        ("bench_gemm", ["--iters", "0"], "argument --iters: 0 is not a positive integer"),
        ("bench_gemm", ["--skip", "bf16"], "--skip: bf16 is the baseline every ratio is taken against"),
        ("bench_gemm", ["--skip", "hopper,bogus"], "--skip: unknown variant(s) ['bogus']; the variants are ['bf16',"),
        ("bench_quantize", ["--bogus"], "unrecognized arguments: --bogus"),
        ("bench_bridge", ["--bogus"], "unrecognized arguments: --bogus"),
        ("bench_llama", ["--backend", "bogus"], "argument --backend: invalid choice: 'bogus'"),
        ("bench_llama", ["--batches", "1,0"], "argument --batches: 0 is not a positive integer"),
        (
            "bench_llama",
            ["--bf16-layouts", "nk,xy"],
            "--bf16-layouts: unknown layout(s) ['xy']; the layouts are kn and nk",
        ),
        ("bench_llama", ["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    ],
)
def test_bad_options_stop_before_any_device_work(monkeypatch, capsys, script, args, message):
    with pytest.raises(SystemExit) as e:
        run_main(monkeypatch, script, *args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_option_types():
    assert timing.int_list("1,8,32") == [1, 8, 32]
    assert timing.shape_list("14336x4096,4096x14336") == [(14336, 4096), (4096, 14336)]
    assert timing.positive_int("7") == 7
