#!/usr/bin/env bash
# On a lent GPU machine: configure a CUDA build in build-gpu, build ghnq_cuda_tests and bench_cuda, run them; logs go to
# $OUT (default ./out). Prepare here first with ../shared/tools/gpu-deps.sh (makes .deps/), then run it in
# a device call with carry [".deps"] as:  scripts/gpu_check.sh   (see /work/shared/GPU.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
if [[ -f .deps/env.sh ]]; then source .deps/env.sh; fi
step() {  # step NAME CMD...: runs CMD with its output in $OUT/NAME.log, prints the time, the log's tail on failure
  local name=$1 t0=$SECONDS; shift
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "$name: ok in $((SECONDS - t0)) s"
  else
    local rc=$?; echo "$name: FAILED ($rc) after $((SECONDS - t0)) s"; tail -n 40 "$OUT/$name.log"; exit "$rc"
  fi
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see $OUT/nvidia-smi.txt)"
step configure cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGHNQ_WITH_CUDA=ON \
  -DGHNQ_BUILD_EXAMPLES=OFF -DGHNQ_BUILD_BENCHMARKS=ON
step build cmake --build "$BUILD" --target ghnq_cuda_tests bench_cuda -j "$(nproc)"
step cuda_tests "$BUILD/tests/ghnq_cuda_tests" --durations yes
tail -n 3 "$OUT/cuda_tests.log"
if grep -q "no CUDA device: skipping" "$OUT/cuda_tests.log"; then
  echo "ghnq_cuda_tests skipped its device tests: no usable GPU"; exit 3
fi
step bench_cuda "$BUILD/benchmarks/bench_cuda" --benchmark_min_time=0.2
grep -E "^BM_" "$OUT/bench_cuda.log"
