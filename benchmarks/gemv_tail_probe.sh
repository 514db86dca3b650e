#!/usr/bin/env bash
# Does the GEMV kernels' last round of units cost time? Each CTA loops over units of rows (4 rows at one row, 8 at
# 3-8 rows), so at (14336, 4096) on 132 SMs some CTAs take one unit more than others (7 against 6 at one row, 14
# against 13 at 8 rows). This times the shipped route (gemv_ab.py, interleaved rounds with bf16) at N that fill
# whole rounds (12672 = 6 x 2112 and 14784 = 7 x 2112 at one row; 13728 = 13 x 1056 and 14784 = 14 x 1056 at 8) and
# at N = 14336 between them; at K = 14336 (one CTA of 896 threads an SM, units of 4 rows) N = 3696 = 7 x 528 and
# 4224 = 8 x 528 around 4096. If time is set by the busiest CTA, 14336 costs as much as the next whole round.
# Usage on the device (132 SMs): bash benchmarks/gemv_tail_probe.sh; writes $OUT/gemv_tail_probe.log and
# $OUT/gemv_tail_{m1,m8,m1_k14336}.json.
set -u
log="$OUT/gemv_tail_probe.log"
ab() {  # ab NAME ROWS SHAPES
  echo "## gemv_ab.py --rows $2 --shapes $3 --rounds 5 shipped=mxfp8_xla/backends/gemv.ptx" >>"$log"
  PYTHONPATH=. python3 benchmarks/gemv_ab.py --rows "$2" --shapes "$3" --rounds 5 \
    shipped=mxfp8_xla/backends/gemv.ptx >>"$log" 2>&1
  mv "$OUT/gemv_ab_m$2.json" "$OUT/gemv_tail_$1.json"
}
ab m1 1 12672x4096,13728x4096,14336x4096,14784x4096
ab m8 8 12672x4096,13728x4096,14336x4096,14784x4096
ab m1_k14336 1 3696x14336,4096x14336,4224x14336
grep -E "^#|^ *\(|sms" "$log"
