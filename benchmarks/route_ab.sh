#!/usr/bin/env bash
# A/B runs of the library's GEMV route in one device call: cuda_gemv_probe.py --route ROWS once per option set, each in
# its own process (bf16, the library's route and its Pallas path, then the edge cases), all into $OUT/route_ab.log.
# Usage on the device: bash benchmarks/route_ab.sh ROWS RUN...
#   each RUN is a comma-separated list of cuda_gemv_probe.py options, "" for the library as it is, e.g.
#   bash benchmarks/route_ab.sh 8 "" "--ptx,ab/variant.ptx" "--mma-smem,163840"
# (variant builds of gemv.cu: benchmarks/gemv_variant_ptx.py).
set -u
rows=$1
shift
for run in "$@"; do
  IFS=, read -r -a opts <<<"$run"
  echo "## cuda_gemv_probe.py --route $rows ${opts[*]}" >>"$OUT/route_ab.log"
  PYTHONPATH=. python3 benchmarks/cuda_gemv_probe.py --route "$rows" "${opts[@]}" >>"$OUT/route_ab.log" 2>&1
done
grep -E "^#|^ *\(|edges|rror" "$OUT/route_ab.log"
