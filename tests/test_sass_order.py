"""benchmarks/sass_order.py on CPU: reading the order of marked instructions, and the opcode counts of the tensor-core
kernel's step, out of nvdisasm's text (fixed snippets)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sass_order import ALU_OPCODES, kernel_sass, opcodes, order, step_counts  # noqa: E402

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


STEP = """\
.text.mma:
        /*0000*/                   LDG.E.128.CONSTANT R8, desc[UR12][R2.64] ;
        /*0010*/               @P1 BRA `(.L_x_91) ;
        /*0020*/                   SHF.R.U32.HI R7, RZ, 0x5, R4 ;
        /*0030*/                   F2FP.F16.E4M3.UNPACK_B R0, R2.H1 ;
        /*0040*/                   HMMA.16816.F32 R4, R4, R28, RZ ;
        /*0050*/                   IMAD R36, R11, 0x1, R61 ;
        /*0060*/              @!P0 SEL R6, R20, R41, !P1 ;
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0080*/                   LOP3.LUT R5, R5, 0x2000, RZ, 0xc0, !PT ;
"""


def test_opcodes_are_first_words_without_predicates():
    assert opcodes(STEP)[:3] == ["LDG", "BRA", "SHF"] and "SEL" in opcodes(STEP)


def test_the_step_runs_from_the_branch_before_the_first_mma_to_the_barrier_after_it():
    counts = step_counts(kernel_sass(STEP, "mma"))
    assert counts == {"BRA": 1, "SHF": 1, "F2FP": 1, "HMMA": 1, "IMAD": 1, "SEL": 1}  # not the LDG, BAR or LOP3
    assert sum(n for op, n in counts.items() if op in ALU_OPCODES) == 3  # SHF, F2FP, SEL; IMAD runs on the FMA pipe
