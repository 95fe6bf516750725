#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds (Release) and runs ctest.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
JOBS=${JOBS:-$(nproc)}
BUILD=${GHNQ_TEST_BUILD_DIR:-build-test}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGHNQ_BUILD_TESTS=ON -DGHNQ_BUILD_EXAMPLES=ON \
      -DGHNQ_BUILD_BENCHMARKS=ON
cmake --build "$BUILD" -j "$JOBS"
cd "$BUILD"
ctest --output-on-failure -j "$JOBS" --timeout 1500
