#!/bin/bash
# The library on jax 0.12.0.1, what pip installs on Python >= 3.12, on the device, whose image holds jax 0.11.2
# (docs/benchmark_log.md, "jax 0.12 on the device"). jax, jaxlib, jax-cuda13-plugin and jax-cuda13-pjrt 0.12.0.1,
# their wheels extracted into one tree and packed as tar.xz (166 MB), travel in four parts under .jax012/ (one a
# call: the device tool carries 64 MiB), with flax 0.12.12's wheel; .jax012/site012.sha256 is the whole archive's.
# A call's carried files replace the previous call's, so each call copies its part to the machine's /tmp first.
#
# Usage (device, repo root): bash benchmarks/jax012_check.sh STEP, where STEP is
#   carry     copy the parts this call carried to /tmp/jax012_parts (then the call may run another step)
#   assemble  check the parts in /tmp/jax012_parts against the sha256, unpack them and the flax wheel into
#             /tmp/site012, print versions
#   routes    route_check.py on jax 0.12: 16-bit outputs at (14336, 4096), where the Mosaic GPU kernel stores them
#             itself, and float32 outputs over every route at N = 1024
#   bench     bench_gemm.py and bench_llama.py on jax 0.11.2 and on jax 0.12, one after the other
#   spill     mosaic_spill_probe.py on jax 0.11.2 and on jax 0.12 under MOSAIC_GPU_DUMP_PTXAS=1, and the shipped
#             kernel's PTX at 256 rows on each (mosaic_sass.py, $OUT/mosaic_sass_VERSION.tar.gz)
#   nvjitlink mosaic_spill_probe.py and bench_gemm.py on jax 0.12 with XLA_FLAGS=--xla_gpu_enable_libnvjitlink=false:
#             jax 0.12 compiles Mosaic GPU kernels for linking, and ptxas ignores setmaxnreg in such code ("C7504 ...
#             across compilation units"); the flag did not change that (thirty-third session)
#   blocks    the library's Mosaic GPU kernel with and without block loads (MosaicConfig.block_loads, routed from 224
#             padded rows on jaxlib >= 0.12) on both versions: mosaic_config_probe.py --first 2 at 64-256 rows, then on
#             0.12 route_check.py with bf16 outputs at (14336, 4096) and (28672, 4096) and bench_gemm.py at 128-256 rows
#             (the thirty-fourth session ran it at fffd389, where the route took block loads from 128 rows)
#   blockrows ROWS  mosaic_config_probe.py --first 2 on jax 0.12 alone at ROWS (comma-separated): where between 128
#             and 256 rows block loads start to pay (thirty-fourth session: from 224)
#   quantize  bench_quantize.py (activation quantization against copy bandwidth) on jax 0.11.2 and on jax 0.12
#   tiles     quantize_tile_probe.py (the activation quantizer's tiles and warps) on jax 0.11.2 and on jax 0.12
#   checks [CHECK ...]  GPU correctness nets on jax 0.12, each a script under benchmarks/ with its options; by default
#             grad_check.py (train mode too), route_check.py with --ragged, with float32 rows and with float16
#             outputs at (14336, 4096), eager_check.py, explicit_mesh_check.py, manual_mesh_check.py and
#             gemv_f32_check.py; exits 1 if one failed
# Logs to $OUT/jax012_STEP.log; JSON under $OUT/jax0112/ and $OUT/jax012/.
set -u
export PYTHONUNBUFFERED=1
SITE=/tmp/site012
PARTS=/tmp/jax012_parts
STEP=${1:?usage: bash benchmarks/jax012_check.sh carry|assemble|routes|bench|spill|nvjitlink|blocks|blockrows ROWS|quantize|tiles|checks [CHECK ...]}
shift
LOG=$OUT/jax012_$STEP.log
on_0112() { mkdir -p "$OUT/jax0112" && OUT=$OUT/jax0112 PYTHONPATH=$PWD python3 "$@"; }
on_012() { mkdir -p "$OUT/jax012" && OUT=$OUT/jax012 PYTHONPATH=$SITE:$PWD python3 "$@"; }
versions='import jax, jaxlib, flax; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, jax.devices())'
GEMM="benchmarks/bench_gemm.py --ms 1,8,16,64,256,2048 --shapes 14336x4096,4096x14336
  --skip emulation,xla_dequant,scaled_dot,fp8_tensor"
LLAMA="benchmarks/bench_llama.py --layers 4 --no-prefill --bf16-layouts nk --fuse-projections --fuse-norms
  --batches 1,8,32"
{
  echo "# bash benchmarks/jax012_check.sh $STEP ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)," \
    "$(date -u +%F))"
  case $STEP in
    carry)
      mkdir -p $PARTS && cp -v .jax012/site012.tar.xz.part* $PARTS/ || exit 1
      ls -l $PARTS
      ;;
    assemble)
      want=$(cat .jax012/site012.sha256)
      got=$(cat $PARTS/site012.tar.xz.part* | sha256sum | cut -c1-64)
      [ "$got" = "$want" ] || { echo "parts' sha256 $got, expected $want"; exit 1; }
      rm -rf $SITE && mkdir -p $SITE && cat $PARTS/site012.tar.xz.part* | xz -d | tar -x -C $SITE || exit 1
      python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE .jax012/flax-*.whl || exit 1
      on_0112 -c "$versions" && on_012 -c "$versions"
      ;;
    routes)
      on_012 benchmarks/route_check.py --rows 1,2,3,8,9,16,17,64,65,256,2048 --widths 14336 --depths 4096 \
        --out-dtype bfloat16
      on_012 benchmarks/route_check.py --rows 1,2,8,16,64,256,2048 --widths 1024 --depths 128,4096,16384
      ;;
    bench)
      for version in 0112 012; do
        echo "=== jax $version: $GEMM" && "on_$version" $GEMM
        echo "=== jax $version: $LLAMA" && "on_$version" $LLAMA
      done
      ;;
    spill)
      for version in 0112 012; do
        echo "=== jax $version: mosaic_spill_probe.py"
        MOSAIC_GPU_DUMP_PTXAS=1 "on_$version" benchmarks/mosaic_spill_probe.py
        echo "=== jax $version: mosaic_sass.py --rows 256 14336,4096"
        "on_$version" benchmarks/mosaic_sass.py --rows 256 14336,4096 && mv "$OUT/jax$version/mosaic_sass.tar.gz" \
          "$OUT/mosaic_sass_$version.tar.gz"
      done
      ;;
    nvjitlink)
      export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_libnvjitlink=false"
      echo "=== jax 0.12, XLA_FLAGS=$XLA_FLAGS: mosaic_spill_probe.py"
      MOSAIC_GPU_DUMP_PTXAS=1 on_012 benchmarks/mosaic_spill_probe.py
      echo "=== jax 0.12, XLA_FLAGS=$XLA_FLAGS: $GEMM" && on_012 $GEMM
      ;;
    blocks)
      for version in 0112 012; do
        echo "=== jax $version: mosaic_config_probe.py --rows 64,128,192,256 --first 2"
        "on_$version" benchmarks/mosaic_config_probe.py --rows 64,128,192,256 --first 2
      done
      echo "=== jax 0.12: route_check.py with bf16 outputs (ROWS from 17; block loads at 256)"
      on_012 benchmarks/route_check.py --rows 17,64,65,256 --widths 14336,28672 --depths 4096 --out-dtype bfloat16
      echo "=== jax 0.12: bench_gemm.py at 128-256 rows"
      on_012 benchmarks/bench_gemm.py --ms 128,208,224,256 --shapes 14336x4096,4096x14336,28672x4096 \
        --skip emulation,xla_dequant,scaled_dot,fp8_tensor
      ;;
    quantize)
      for version in 0112 012; do
        echo "=== jax $version: bench_quantize.py" && "on_$version" benchmarks/bench_quantize.py
      done
      ;;
    tiles)
      for version in 0112 012; do
        echo "=== jax $version: quantize_tile_probe.py" && "on_$version" benchmarks/quantize_tile_probe.py
      done
      ;;
    blockrows)
      echo "=== jax 0.12: mosaic_config_probe.py --rows ${1:?rows} --first 2"
      on_012 benchmarks/mosaic_config_probe.py --rows "$1" --first 2
      ;;
    checks)
      [ $# -gt 0 ] || set -- grad_check.py "route_check.py --ragged" "route_check.py --dtype float32" \
        "route_check.py --out-dtype float16 --widths 14336 --depths 4096" eager_check.py explicit_mesh_check.py \
        manual_mesh_check.py gemv_f32_check.py
      failed=0
      for check in "$@"; do
        echo "=== jax 0.12: $check"
        # shellcheck disable=SC2086 # the check's options split into words
        on_012 benchmarks/$check || { echo "=== FAILED: $check"; failed=1; }
      done
      tar -czf "$OUT/jax012_checks.tar.gz" -C "$OUT" jax012 && rm -rf "$OUT/jax012"  # at most 8 files come back
      exit $failed
      ;;
    *) echo "unknown step $STEP" && exit 2 ;;
  esac
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
