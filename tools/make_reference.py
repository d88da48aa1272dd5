#!/usr/bin/env python3
"""Writes the reference fixtures that the C++ tests read (tests/fixtures/).

Run through the reference venv:   tools/make_reference.sh [PART ...]
Parts: io, tokens, models, peft, chat, peft_combine, dora, adalora, pissa, nf4, kquant, qlora, rope (default: all). Each part is a module in tools/ref_<part>.py with a
main(fixtures_dir, models_dir) function. Real models come from tools/fetch_models.sh (models/).
"""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
MODELS = os.path.join(ROOT, "models")
PARTS = ["io", "tokens", "models", "peft", "chat", "peft_combine", "dora", "adalora", "pissa", "nf4", "kquant", "qlora", "rope"]


def main(argv):
    parts = argv or PARTS
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(FIXTURES, exist_ok=True)
    for part in parts:
        if part not in PARTS:
            sys.exit(f"make_reference: unknown part '{part}', expected one of {PARTS}")
        print(f"[make_reference] {part}", flush=True)
        importlib.import_module(f"ref_{part}").main(FIXTURES, MODELS)


if __name__ == "__main__":
    main(sys.argv[1:])
