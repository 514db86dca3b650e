#!/usr/bin/env bash
# Nsight Compute over benchmarks/ncu_gemv.py, on the device: the report to $OUT/ncu_gemv.txt, the driver's own output
# (the order of the profiled kernels) to $OUT/ncu_gemv_driver.log. Only python is profiled, not the nvcc it runs; a
# segfault prints Python's stack (the first run, eighteenth session, died with nothing but "Segmentation fault").
set -u
XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. ncu --clock-control none --profile-from-start off \
  --target-processes application-only \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
  --section MemoryWorkloadAnalysis --section LaunchStats --section ComputeWorkloadAnalysis \
  --log-file "$OUT/ncu_gemv.txt" --metrics "$(PYTHONPATH=. python3 benchmarks/ncu_gemv.py --ncu-metrics)" \
  python3 -X faulthandler benchmarks/ncu_gemv.py >"$OUT/ncu_gemv_driver.log" 2>&1
echo "ncu exit $?"
grep -E "^  [0-9]+:" "$OUT/ncu_gemv_driver.log"
PYTHONPATH=. python3 benchmarks/ncu_gemv.py --table "$OUT/ncu_gemv.txt"
