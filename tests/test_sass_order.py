"""benchmarks/sass_order.py on CPU: reading the order of marked instructions out of nvdisasm's text (fixed snippet)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sass_order import kernel_sass, order  # noqa: E402

SASS = """\
.text.first:
        /*0000*/                   LDG.E.128.CONSTANT R8, desc[UR12][R2.64] ;
        /*0010*/                   LDG.E.128.CONSTANT R12, desc[UR12][R2.64+0x10] ;
        /*0020*/                   F2FP.F16.E4M3.UNPACK_B R29, R20 ;
        /*0030*/                   FFMA R1, R2, R3, R1 ;
        /*0040*/                   F2FP.F16.E4M3.UNPACK_B R30, R21 ;
        /*0050*/               @P0 LDG.E.128.CONSTANT R16, desc[UR12][R4.64] ;
        /*0060*/                   SHFL.BFLY PT, R45, R45, 0x10, 0x1f ;
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0080*/               @!P1 EXIT ;
.L_x_1:
        /*0090*/                   EXIT ;
.text.second:
        /*0000*/                   HMMA.16816.F32 R4, R4, R28, RZ ;
"""


def test_order_counts_runs_of_marked_opcodes_predicated_or_not():
    assert order(kernel_sass(SASS, "first")) == [
        ("LDG.E.128.CONSTANT", 2),
        ("F2FP.F16.E4M3.UNPACK_B", 2),  # the FFMA between them is not marked
        ("LDG.E.128.CONSTANT", 1),
        ("SHFL.BFLY", 1),
        ("BAR.SYNC.DEFER_BLOCKING", 1),
        ("EXIT", 2),
    ]


def test_each_kernel_is_its_own_section():
    assert order(kernel_sass(SASS, "second")) == [("HMMA.16816.F32", 1)]
