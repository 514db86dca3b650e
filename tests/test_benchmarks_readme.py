"""benchmarks/README.md names every script, kernel source and tiling file in benchmarks/."""

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_benchmarks_readme_names_every_script():
    readme = (BENCHMARKS / "README.md").read_text()
    files = [p.name for p in BENCHMARKS.iterdir() if p.is_file() and p.name != "README.md"]
    assert files
    assert [name for name in files if f"`{name}`" not in readme] == []
