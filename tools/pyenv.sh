#!/usr/bin/env bash
# Creates tools/.venv with the Python reference stack (torch, transformers, peft, gguf, ...).
# Only the fixture generators in tools/ use it; lorafit itself never needs Python.
# Prints the venv's python path on the last line.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${LORAFIT_VENV:-$PWD/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, transformers, peft, gguf, safetensors, tokenizers, bitsandbytes" 2>/dev/null; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==2.15.*" "transformers==5.23.*" "peft==0.21.*" "gguf==0.19.*" \
    "safetensors==0.8.*" "tokenizers==0.23.*" "numpy==2.4.*" "accelerate==1.15.*" "bitsandbytes==0.50.*" sentencepiece
fi
echo "$VENV/bin/python"
