"""benchmarks/mosaic_sass.py's reading of a SASS listing (the dumps themselves come from the GPU run)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mosaic_sass  # noqa: E402

# an outer loop (0x10 .. 0x70) around the step loop (0x20 .. 0x60, by label), one more loop without MMAs
LISTING = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDS.U16 R2, [R3] ;
.L_x_1:
        /*0020*/                   F2FP.F16.E4M3.UNPACK_B R2, R3 ;
        /*0030*/              @!P0 HADD2.F32 R4, -RZ, R2.H0_H0 ;
        /*0040*/                   HGMMA.64x16x16.F32.BF16 R24, R4, gdesc[UR4], R24 ;
        /*0050*/                   HGMMA.64x16x16.F32.BF16 R24, R6, gdesc[UR8], R24 ;
        /*0060*/               @P1 BRA `(.L_x_1) ;
        /*0070*/               @P2 BRA 0x10 ;
        /*0080*/                   NANOSLEEP 0x20 ;
        /*0090*/               @P3 BRA 0x80 ;
        /*00a0*/                   EXIT ;
"""


def test_step_loop_is_the_smallest_loop_holding_every_mma():
    instructions, body = mosaic_sass.step_loop(LISTING)
    assert len(instructions) == 11
    assert [addr for addr, _, _ in body] == [0x20, 0x30, 0x40, 0x50, 0x60]
    assert mosaic_sass.mix(body) == {"HGMMA": 2, "F2FP": 1, "HADD2": 1, "BRA": 1}
    assert mosaic_sass.report(LISTING).startswith("11 instructions in the kernel; the step loop holds 5: HGMMA 2")


def test_step_loop_refuses_a_listing_without_an_mma_loop():
    with pytest.raises(ValueError, match="no loop holds every HGMMA"):
        mosaic_sass.step_loop(LISTING.replace("HGMMA", "HMMA"))
