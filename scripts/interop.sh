#!/usr/bin/env bash
# Interop stage (CI runs it after the test suite): the Python ecosystem loads what lorafit writes.
#   1. PEFT loads an adapter that `lorafit train` trained on SST-2 (MiniLM) and predicts what
#      `lorafit predict` predicts (tools/check_trained_adapter.py);
#   2. llama.cpp (llama-cpp-python) loads our LoRA GGUF and our merged GGUF of SmolLM2 and gives
#      our logits (tools/check_llama_cpp.py);
#   3. PEFT loads our folders of every method on the tiny models (tools/check_peft_load.py), PiSSA
#      and OLoRA runs trained by lorafit and their plain-LoRA conversion
#      (tools/check_pissa_roundtrip.py), and transformers a merged classifier
#      (tools/check_merged_classifier.py);
#   4. QLoRA: transformers + bitsandbytes loads `lorafit quantize` folders of SmolLM2 with our
#      logits, lorafit loads transformers' 4-bit folder and a PEFT QLoRA adapter on it with
#      PyTorch's logits (tools/check_bnb4_interop.py);
#   5. LongLoRA: PEFT loads a SmolLM2 adapter trained with --rope-scaling and --trainable-extra,
#      and transformers with that scaling gives lorafit's loss on 2,048 tokens
#      (tools/check_longlora.py).
# The Python stack lives in a venv outside the clone, kept between runs
# ($LORAFIT_VENV, default ~/.cache/lorafit/venv): the first run on a machine installs torch,
# transformers, peft and gguf (tools/pyenv.sh) and builds llama-cpp-python from its PyPI sdist
# without its multimodal library (~15 minutes on 2 cores); later runs reuse it.
#   scripts/interop.sh [BUILD_DIR]       (after scripts/test.sh, which builds and fetches)
#   scripts/interop.sh --prepare         (only the venv and llama-cpp-python; .ci/run starts it in
#                                         the background while the C++ build runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PREPARE=0
if [ "${1:-}" = "--prepare" ]; then PREPARE=1; shift; fi
BUILD=${1:-build}
LORAFIT=$BUILD/lorafit
export LORAFIT_VENV=${LORAFIT_VENV:-$HOME/.cache/lorafit/venv}
PY=$(bash tools/pyenv.sh | tail -n 1)
if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
  echo "[interop] building llama-cpp-python (once per machine)"
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" \
    "$PY" -m pip install -q --retries 10 "llama-cpp-python==0.3.36" diskcache jinja2
fi
if [ "$PREPARE" = 1 ]; then echo "[interop] Python stack ready: $PY"; exit 0; fi
bash tools/fetch_models.sh
bash tools/fetch_data.sh
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

echo "== [interop] PEFT loads an adapter trained by lorafit train on SST-2"
"$LORAFIT" train --model models/all-MiniLM-L6-v2 --train data/sst2/train.tsv --validation data/sst2/dev.tsv \
  --output "$T/sst2" --max-steps 40 --eval-max-batches 2 --quiet
"$PY" tools/check_trained_adapter.py --model models/all-MiniLM-L6-v2 --adapter "$T/sst2/final" \
  --data data/sst2/dev.tsv --n 64 --lorafit "$LORAFIT"

echo "== [interop] llama.cpp loads our LoRA GGUF and merged GGUF"
"$PY" tools/check_llama_cpp.py --lorafit "$LORAFIT"

echo "== [interop] PEFT loads our saved folders of every method (tiny models) with our logits"
"$PY" tools/check_peft_load.py "$BUILD"

echo "== [interop] PEFT loads PiSSA / OLoRA runs trained by lorafit, and their plain-LoRA conversion"
"$PY" tools/check_pissa_roundtrip.py "$BUILD"

echo "== [interop] a merged MiniLM classifier loads in transformers and predicts as lorafit does"
"$PY" tools/check_merged_classifier.py "$BUILD" data/sst2

echo "== [interop] QLoRA: bitsandbytes 4-bit folders both ways, a PEFT QLoRA adapter on our NF4 base"
SMOL=$("$PY" tools/make_smollm2_hf.py --out runs/smollm2-f32 | tail -n 1)
"$PY" tools/check_bnb4_interop.py "$BUILD" "$SMOL"
echo "== [interop] LongLoRA: PEFT loads a --rope-scaling / --trainable-extra adapter of SmolLM2,"
echo "   transformers with the recorded scaling (and the merged folder's config.json) gives our loss"
"$LORAFIT" train --model "$SMOL" --train data/tinyshakespeare/input.txt --output "$T/longlora" \
  --block-size 1024 --batch-size 1 --max-steps 1 --lr 1e-3 --val-fraction 0.005 --rope-scaling linear:2 --attention s2 \
  --target-modules q_proj,k_proj,v_proj,o_proj --trainable-extra embed,norm --gradient-checkpointing --quiet
"$LORAFIT" adapter merge "$T/longlora/final" --base "$SMOL" --out "$T/longlora_merged" > /dev/null
"$PY" tools/check_longlora.py --model "$SMOL" --adapter "$T/longlora/final" \
  --text data/tinyshakespeare/input.txt --tokens 2048 --lorafit "$LORAFIT" --merged "$T/longlora_merged"

echo "[interop] all checks passed"
