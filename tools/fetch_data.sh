#!/usr/bin/env bash
# Places the data sets that the main job, tests, benchmarks and docs use under data/ (git-ignored):
#   data/sst2/train.tsv  data/sst2/dev.tsv      GLUE SST-2 (label<TAB>sentence; dev: label<TAB>content)
#   data/tinyshakespeare/input.txt              Tiny Shakespeare (char-rnn)
# Sources, first that applies:
#   1. $LORAFIT_DATA_URL: a base URL (file://, http://, https://) under which sst2/train.tsv,
#      sst2/dev.tsv and tinyshakespeare/input.txt are found (a mirror of this layout);
#   2. ../shared/data beside the repository, where that exists (the project's machines;
#      $LORAFIT_SHARED_DATA names another such folder);
#   3. the data sets' public download locations: Tiny Shakespeare from the char-rnn repository,
#      SST-2 from the GLUE distribution (SST-2.zip, converted to the layout above;
#      $LORAFIT_GLUE_SST2_URL overrides where that zip comes from).
# Every file from 1 or 2 (and Tiny Shakespeare from 3) is checked against the md5 below; a
# mismatch or a failed download exits non-zero naming the file. GLUE's own files are laid out
# differently (sentence first, another dev order), so the converted SST-2 is checked by its row
# and label counts instead (67,349 / 872 rows; dev 444 positive, 428 negative).
# Files are written to a temporary name in the target folder and renamed, so a data file is never
# half written. Idempotent: files already present with the right md5 are kept, no network needed.
#   tools/fetch_data.sh [DATA_DIR]        (default: <repo>/data, or $LORAFIT_DATA_DIR)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA_DIR=${1:-${LORAFIT_DATA_DIR:-$ROOT/data}}
SHARED=${LORAFIT_SHARED_DATA:-$(cd "$ROOT/.." && pwd)/shared/data}

exec python3 - "$DATA_DIR" "$SHARED" "${LORAFIT_DATA_URL:-}" <<'PY'
import hashlib, io, os, sys, tempfile, urllib.request, zipfile

data_dir, shared, base_url = sys.argv[1], sys.argv[2], sys.argv[3]
FILES = {
    "sst2/train.tsv": "0f7c7389da97a0e006a89ffb5efbcaa5",
    "sst2/dev.tsv": "2b070f88622773268a9bb41c6e941e60",
    "tinyshakespeare/input.txt": "6fb458f1232090904fb40fe944165e91",
}
PUBLIC_SHAKESPEARE = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
PUBLIC_GLUE_SST2 = os.environ.get("LORAFIT_GLUE_SST2_URL", "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip")


def log(msg):
    print(f"[fetch_data] {msg}", file=sys.stderr)


def fail(msg):
    log("error: " + msg)
    sys.exit(1)


def md5(b):
    return hashlib.md5(b).hexdigest()


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.read()
    except Exception as e:  # noqa: BLE001 - any failure is reported with the URL
        fail(f"{url}: download failed: {e}")


def install(rel, content):
    dst = os.path.join(data_dir, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=".fetch-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def present(rel):
    p = os.path.join(data_dir, rel)
    if not os.path.isfile(p):
        return False
    with open(p, "rb") as f:
        return md5(f.read()) == FILES[rel]


def checked(rel, content, origin):
    got = md5(content)
    if got != FILES[rel]:
        fail(f"{origin}: md5 {got}, expected {FILES[rel]} for {rel} (a different or damaged file)")
    return content


def glue_sst2():
    """GLUE's SST-2.zip (sentence<TAB>label) -> our layout, checked by row and label counts."""
    z = zipfile.ZipFile(io.BytesIO(fetch(PUBLIC_GLUE_SST2)))
    out = {}
    for split, header, rows, pos in (("train", "label\tsentence", 67349, None), ("dev", "label\tcontent", 872, 444)):
        lines = z.read(f"SST-2/{split}.tsv").decode("utf-8").splitlines()
        if not lines or lines[0].split("\t") != ["sentence", "label"]:
            fail(f"{PUBLIC_GLUE_SST2}: SST-2/{split}.tsv: expected the header sentence<TAB>label")
        body = []
        for n, line in enumerate(lines[1:], start=2):
            text, _, label = line.rpartition("\t")
            if label not in ("0", "1"):
                fail(f"{PUBLIC_GLUE_SST2}: SST-2/{split}.tsv line {n}: label '{label}' is not 0 or 1")
            body.append(f"{label}\t{text.strip()}")
        n_pos = sum(1 for b in body if b[0] == "1")
        if len(body) != rows or (pos is not None and n_pos != pos):
            fail(f"{PUBLIC_GLUE_SST2}: SST-2/{split}.tsv has {len(body)} rows ({n_pos} positive), "
                 f"expected {rows}" + (f" ({pos} positive)" if pos else ""))
        out[f"sst2/{split}.tsv"] = ("\n".join([header] + body) + "\n").encode("utf-8")
    return out


missing = [rel for rel in FILES if not present(rel)]
if not missing:
    log(f"all data present in {data_dir}")
    sys.exit(0)

glue = None
for rel in missing:
    if base_url:
        url = base_url.rstrip("/") + "/" + rel
        install(rel, checked(rel, fetch(url), url))
        log(f"{rel}: from {url}")
    elif os.path.isfile(os.path.join(shared, rel)):
        src = os.path.join(shared, rel)
        with open(src, "rb") as f:
            install(rel, checked(rel, f.read(), src))
        log(f"{rel}: from {src}")
    elif rel.startswith("tinyshakespeare/"):
        install(rel, checked(rel, fetch(PUBLIC_SHAKESPEARE), PUBLIC_SHAKESPEARE))
        log(f"{rel}: from {PUBLIC_SHAKESPEARE}")
    else:
        if glue is None:
            glue = glue_sst2()
        install(rel, glue[rel])
        log(f"{rel}: from {PUBLIC_GLUE_SST2} (converted; checked by row and label counts)")
log(f"data in {data_dir}")
PY
