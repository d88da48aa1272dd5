#!/usr/bin/env bash
# The main job: set up, build, and run lorafit with its defaults.
# Today this builds the tool and shows its help; the training milestone turns it into
# "fetch MiniLM and fine-tune it with LoRA on SST-2".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh build -DLORAFIT_BUILD_TESTS=OFF -DLORAFIT_BUILD_BENCH=OFF
./build/lorafit --help
