#!/usr/bin/env bash
# The main job: installs what is missing, builds (Release) and runs the main example.
# Usage: scripts/demo.sh [extra arguments for the example]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
JOBS=${JOBS:-$(nproc)}
BUILD=${GHNQ_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGHNQ_BUILD_TESTS=OFF -DGHNQ_BUILD_EXAMPLES=ON \
      -DGHNQ_BUILD_BENCHMARKS=OFF
cmake --build "$BUILD" -j "$JOBS" --target 00_train_cnn
"$BUILD/examples/00_train_cnn" "$@"
