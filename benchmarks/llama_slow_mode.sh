#!/bin/bash
# The Llama decode's two step times (docs/benchmarks.md, "The Llama decode's two step times"): experiments on
# what makes most processes wait ~30 us a step between the MXFP8 step's kernels.
#
# Usage (device, repo root): bash benchmarks/llama_slow_mode.sh PART [ROUNDS]; logs to $OUT/slow_mode_PART.log.
#   ab      XLA's DynamicSliceCopyFusionAsyncWrapper (the V-cache update fed by the qkv GEMV becomes an async
#           memcpy on a second stream) on and off, alternating, ROUNDS processes each (bench_llama.py, batch 1)
#   f32out  the GEMVs write float32 and XLA rounds (the update is then no bare copy): cuda_gemv_probe.py
#   pin     the process pinned to the first or the second half of the CPUs, alternating, ROUNDS each
#   thunks  XLA's dump of both models (thunk sequences and command buffers) as $OUT/thunks.tar.gz
#   vlog    command-buffer log lines, counted by message with the numbers masked, per model
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PART=$1
ROUNDS=${2:-3}
LOG=$OUT/slow_mode_$PART.log
NOISE='^W0000\|^I0000\|USDT'
LLAMA="python3 benchmarks/bench_llama.py --layers 4 --batches 1 --no-prefill --bf16-layouts nk --fuse-projections"
NO_WRAPPER=--xla_disable_hlo_passes=dynamic-slice-copy-fusion-async-wrapper
RESULTS='batch  1\|decode tokens'
{
  echo "# bash benchmarks/llama_slow_mode.sh $PART $ROUNDS ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null))"
  case $PART in
    ab)
      for r in $(seq "$ROUNDS"); do
        for flags in "" "$NO_WRAPPER"; do
          echo "=== round $r XLA_FLAGS=$flags"
          XLA_FLAGS="$flags" $LLAMA 2>&1 | grep "$RESULTS"
        done
      done ;;
    f32out)
      python3 benchmarks/cuda_gemv_probe.py --llama-only --fused-only --models bf16_nk,mxfp8,mxfp8_f32out,mxfp8 2>&1 |
        grep -v "$NOISE" ;;
    pin)
      half=$(( $(nproc) / 2 ))
      lscpu | grep -i "numa\|model name"
      nvidia-smi topo -m
      for r in $(seq "$ROUNDS"); do
        for cpus in "0-$((half - 1))" "$half-$(( $(nproc) - 1 ))"; do
          echo "=== round $r taskset -c $cpus"
          taskset -c "$cpus" $LLAMA 2>&1 | grep "$RESULTS"
        done
      done ;;
    thunks)
      rm -rf /tmp/xla_dump
      XLA_FLAGS=--xla_dump_to=/tmp/xla_dump $LLAMA 2>&1 | grep "$RESULTS"
      (cd /tmp/xla_dump && ls | grep -i "thunk\|command_buffer" | head -50 &&
        tar czf "$OUT/thunks.tar.gz" $(ls | grep -i "generate" | grep -i "thunk\|after_optimizations.txt\|buffer-assignment"))
      ;;
    vlog)
      TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_MAX_VLOG_LEVEL=0 TF_CPP_VMODULE=command_buffer_thunk=3,command_buffer_cmd=2 \
        $LLAMA >/tmp/vlog.txt 2>&1
      grep "$RESULTS" /tmp/vlog.txt
      # Count each message per model (bench_llama prints a model's result after running it).
      awk '/ decode .* ms\/step/ {print "=== up to: " $0; for (m in n) print n[m], m | "sort -rn | head -25"; close("sort -rn | head -25"); delete n; next}
           /command_buffer/ {sub(/^.*\] /, ""); gsub(/0x[0-9a-f]+/, "PTR"); gsub(/[0-9]+/, "N"); n[$0]++}' /tmp/vlog.txt ;;
    *) echo "unknown part $PART"; exit 2 ;;
  esac
} 2>&1 | tee "$LOG"
