#!/usr/bin/env bash
# Sets up (system packages, build) and runs the whole test suite.
#   scripts/test.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
shift || true
bash scripts/setup.sh "$BUILD_DIR" -DLORAFIT_BUILD_TESTS=ON "$@"
bash tools/fetch_models.sh   # real models for the model/tokenizer tests; fails loudly, never skips
bash tools/fetch_data.sh     # SST-2 and Tiny Shakespeare into data/, md5-checked
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$(nproc)"
