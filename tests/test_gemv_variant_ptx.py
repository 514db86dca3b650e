"""benchmarks/gemv_variant_ptx.py on CPU: the source substitutions, and that every kept variant (benchmarks/variants/)
still applies to gemv.cu (the build itself needs NVRTC)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from gemv_variant_ptx import variant_base_source, variant_source, variant_substitutions  # noqa: E402

from mxfp8_xla.backends import cuda_gemv  # noqa: E402


def test_each_substitution_replaces_its_one_occurrence_in_order():
    assert variant_source("a b c", ["b=>x y", "y=>z"]) == "a x z c"


def test_the_library_source_has_the_weight_load_the_measured_variants_replaced_once():
    source = cuda_gemv.SOURCE.read_text()
    out = variant_source(source, ["ld.global.nc.v4.u32=>ld.global.nc.L1::no_allocate.v4.u32"])
    assert out.count("ld.global.nc.L1::no_allocate.v4.u32") == 1 and len(out) == len(source) + len(".L1::no_allocate")


@pytest.mark.parametrize(
    "spec, why",
    [("b", "expected OLD=>NEW"), ("q=>r", "occurs 0 times"), ("a=>r", "occurs 2 times")],
)
def test_a_substitution_must_name_exactly_one_occurrence(spec, why):
    with pytest.raises(ValueError, match=why):
        variant_source("a b a", [spec])


def test_pairs_substitute_as_the_command_lines_do():
    assert variant_source("a\nb c", [("a\nb", "x"), "c=>y"]) == "x y"


@pytest.mark.parametrize("variant", sorted((Path(__file__).parent.parent / "benchmarks" / "variants").glob("*.json")))
def test_every_kept_variant_still_applies_to_its_base_source(variant):
    source = variant_base_source(variant)
    out = variant_source(source, variant_substitutions(variant))
    assert json.loads(variant.read_text())["about"] and out != source


def test_variants_without_a_base_vary_the_library_source(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"about": "x", "substitutions": []}))
    assert variant_base_source(plain) == cuda_gemv.SOURCE.read_text()


def test_variants_of_different_bases_do_not_compose(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"about": "x", "base": "b53d93d", "substitutions": []}))
    b.write_text(json.dumps({"about": "x", "base": "58930b2", "substitutions": []}))
    with pytest.raises(ValueError, match="different base commits"):
        variant_base_source(a, b)


def test_the_two_units_ahead_variant_applies_after_its_shared_memory_control():
    folder = Path(__file__).parent.parent / "benchmarks" / "variants"
    variants = (folder / "mma_act_smem.json", folder / "mma_ahead2.json")
    out = variant_source(variant_base_source(*variants), variant_substitutions(*variants))
    assert "extern __shared__ uint2 act[];" in out and "Unit a, b, c;" in out and "__syncthreads_or(!exact)" in out
    assert "marked[" not in out  # every use of the shared-memory marks went with them
