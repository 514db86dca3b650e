#!/bin/bash
# The Llama decode with and without LlamaConfig.fuse_norms (RMSNorm inside the MXFP8 projections), alternating
# processes so drift hits both alike (docs/benchmark_log.md, "RMSNorm inside the decode step").
#
# Usage (device, repo root): [BATCHES=1,8] bash benchmarks/llama_fuse_norms.sh [ROUNDS]; log to
# $OUT/llama_fuse_norms.log.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
ROUNDS=${1:-2}
LOG=$OUT/llama_fuse_norms.log
LLAMA="python3 benchmarks/bench_llama.py --layers 4 --no-prefill --bf16-layouts nk --fuse-projections"
{
  echo "# BATCHES=${BATCHES:-1,8} bash benchmarks/llama_fuse_norms.sh $ROUNDS" \
    "($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $(date -u +%F))"
  for r in $(seq "$ROUNDS"); do
    for norms in "" "--fuse-norms"; do
      echo "=== round $r: ${norms:-separate norms}"
      $LLAMA --batches "${BATCHES:-1,8}" $norms 2>&1 | grep "decode"
    done
  done
} 2>&1 | tee "$LOG"
