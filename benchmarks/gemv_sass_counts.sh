#!/bin/bash
# Per kernel of the shipped gemv.ptx: ptxas (sm_90) register report and the SASS instruction counts that decide the
# tensor-core GEMV kernels' speed (E4M3 -> f16 conversions, MMAs, shared and global loads). Run on a machine with the
# CUDA toolkit: bash benchmarks/gemv_sass_counts.sh > $OUT/gemv_sass_counts.txt
set -e
ptx=${1:-mxfp8_xla/backends/gemv.ptx}
cubin=$(mktemp --suffix=.cubin)
trap 'rm -f "$cubin"' EXIT
ptxas -arch=sm_90 -v "$ptx" -o "$cubin" 2>&1 | grep -A1 "mma" | grep -v "^--"
for fn in $(cuobjdump -sass "$cubin" | sed -n 's/.*Function : \(mxfp8_gemv_mma\w*f32\).*/\1/p'); do
  sass=$(cuobjdump -sass -fun "$fn" "$cubin")
  echo "$fn: F2FP $(grep -c 'F2FP' <<<"$sass") HMMA $(grep -c 'HMMA' <<<"$sass") LDS $(grep -c 'LDS' <<<"$sass")" \
    "LDG $(grep -c 'LDG' <<<"$sass") SHFL $(grep -c 'SHFL' <<<"$sass") total $(grep -c '/\*[0-9a-f]*\*/ ' <<<"$sass")"
done
