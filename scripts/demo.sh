#!/usr/bin/env bash
# The main job: installs what is missing, builds (Release), then trains a GHN-2 on Fashion-MNIST
# with meta-batches of DeepNets-1M architectures and prints the evaluation table (unseen test-split
# architectures, trained GHN versus the same GHN untrained).
# Usage: scripts/demo.sh [extra arguments for examples/02_train_ghn, e.g. --steps 500]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
JOBS=${JOBS:-$(nproc)}
BUILD=${GHNQ_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGHNQ_BUILD_TESTS=OFF -DGHNQ_BUILD_EXAMPLES=ON \
      -DGHNQ_BUILD_BENCHMARKS=OFF
cmake --build "$BUILD" -j "$JOBS" --target 02_train_ghn
"$BUILD/examples/02_train_ghn" --steps 250 --meta-batch 4 --fixed-width --eval-archs 100 --test-limit 500 "$@"
