#!/usr/bin/env bash
# The main job: installs what is missing, builds (Release), then runs the reduced GHN-QAT study on
# Fashion-MNIST: a GHN-2 trained in float with meta-batches of DeepNets-1M architectures, QAT-4 and
# QAT-2 GHNs fine-tuned from it with quantization in the loop, and the table of mean top-1 on unseen
# test-split architectures (random-init GHN, FP, QAT-4, QAT-2 x FP32, W8A8, W4A4, W2A2), with CSV,
# JSON lines and an SVG plot in runs/demo.
# Usage: scripts/demo.sh [extra arguments for `ghnq experiment qat`, e.g. --steps 500]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
JOBS=${JOBS:-$(nproc)}
BUILD=${GHNQ_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGHNQ_BUILD_TESTS=OFF -DGHNQ_BUILD_EXAMPLES=ON \
      -DGHNQ_BUILD_BENCHMARKS=OFF
cmake --build "$BUILD" -j "$JOBS" --target ghnq_cli
"$BUILD/examples/ghnq" experiment qat --reduced --out "${GHNQ_DEMO_OUT:-runs/demo}" --steps 250 --ft-steps 100 \
    --meta-batch 4 --fixed-width --eval-archs 30 --test-limit 500 "$@"
