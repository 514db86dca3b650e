"""The README's usage example and demo command run as written."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

from mxfp8_xla.__main__ import main as cli_main


def test_readme_usage_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["y"].shape == (8, 512)
    assert scope["sw"].shape == (512 * 32,)


def test_readme_demo_command_runs():
    """``python -m mxfp8_xla`` (the README's demo command) prints the demo; the CLI's subcommands run."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "pip install -e . && python -m mxfp8_xla\n" in text
    proc = subprocess.run(
        [sys.executable, "-m", "mxfp8_xla"], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    mxfp8_err = float(re.search(r"MXFP8 vs float32 reference: (\S+)", proc.stdout).group(1))
    bf16_err = float(re.search(r"bf16  vs float32 reference: (\S+)", proc.stdout).group(1))
    assert 1e-3 < bf16_err < mxfp8_err < 0.06  # E4M3 keeps 3 mantissa bits, bf16 7
    assert "1.94x smaller than bf16" in proc.stdout


def test_cli_info_subcommand(capsys):
    assert cli_main(["info"]) == 0
    assert "backends:" in capsys.readouterr().out
