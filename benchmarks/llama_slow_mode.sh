#!/bin/bash
# The Llama decode's slow mode (docs/benchmark_log.md, "The slow mode's cause"): MXFP8 decode steps ~30 us longer when
# XLA's DynamicSliceCopyFusionAsyncWrapper turns the V-cache update fed by the qkv GEMV into an async copy.
#
# Usage (device, repo root): [BATCHES=1,8] bash benchmarks/llama_slow_mode.sh PART [ROUNDS]; log to
# $OUT/slow_mode_PART.log.
#   ab      generate() as shipped (compiled with mxfp8_xla.DECODE_LOOP_COMPILER_OPTIONS, which disables that pass)
#           and a copy of the tree without the option, alternating, ROUNDS processes each (bench_llama.py at
#           BATCHES, default 1). (The first A/B, before the option existed, set the same pass off in XLA_FLAGS.)
#   f32out  the GEMVs write float32 and XLA rounds, so the update is no bare copy (cuda_gemv_probe.py's Llama part;
#           run before the option existed)
set -u
export PYTHONUNBUFFERED=1
PART=$1
ROUNDS=${2:-3}
LOG=$OUT/slow_mode_$PART.log
NOISE='^W0000\|^I0000\|USDT'
LLAMA="python3 benchmarks/bench_llama.py --layers 4 --no-prefill --bf16-layouts nk --fuse-projections"
WITHOUT=/tmp/without_decode_loop_options

copy_without_option() {
  rm -rf $WITHOUT && cp -r . $WITHOUT
  sed -i '/compiler_options=DECODE_LOOP_COMPILER_OPTIONS,/d' $WITHOUT/examples/llama/generate.py
  if grep -q "compiler_options=DECODE_LOOP_COMPILER_OPTIONS" $WITHOUT/examples/llama/generate.py; then
    echo "the copy still compiles generate() with the option"; exit 1
  fi
}

{
  echo "# BATCHES=${BATCHES:-1} bash benchmarks/llama_slow_mode.sh $PART $ROUNDS" \
    "($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $(date -u +%F))"
  case $PART in
    ab)
      copy_without_option
      for r in $(seq "$ROUNDS"); do
        for tree in $PWD $WITHOUT; do
          echo "=== round $r: $tree"
          (cd $tree && PYTHONPATH=$tree $LLAMA --batches "${BATCHES:-1}" 2>&1 | grep "decode")
        done
      done ;;
    f32out)
      PYTHONPATH=$PWD python3 benchmarks/cuda_gemv_probe.py --llama-only --fused-only \
        --models bf16_nk,mxfp8,mxfp8_f32out,mxfp8 2>&1 | grep -v "$NOISE" ;;
    *) echo "unknown part $PART"; exit 2 ;;
  esac
} 2>&1 | tee "$LOG"
