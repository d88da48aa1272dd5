#!/usr/bin/env bash
# Sets up the reference venv and the real models, then writes tests/fixtures/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash tools/pyenv.sh | tail -n 1)
bash tools/fetch_models.sh
exec "$PY" tools/make_reference.py "$@"
