# Shared by the MPI script tests: a copy of the tiny BERT fixture with a WordPiece tokenizer and
# its dropout off, and a small sentiment TSV, in $1.
#   source tests/scripts/mpi_common.sh; mpi_fixture SRC_DIR WORK_DIR
mpi_fixture() {
  local src=$1 work=$2
  mkdir -p "$work/tb"
  cp "$src/tests/fixtures/models/tiny_bert/model.safetensors" "$work/tb/"
  python3 - "$src" "$work" <<'PY'
import json, random, sys
src, work = sys.argv[1], sys.argv[2]
cfg = json.load(open(src + "/tests/fixtures/models/tiny_bert/config.json"))
cfg["hidden_dropout_prob"] = 0.0
cfg["attention_probs_dropout_prob"] = 0.0
json.dump(cfg, open(work + "/tb/config.json", "w"))
w = ["good", "bad", "great", "awful", "movie", "film", "plot", "fine", "dull", "fun", "the", "a",
     "is", "was", "very", "not"]
vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
vocab.update({x: 4 + i for i, x in enumerate(w)})
json.dump({"model": {"type": "WordPiece", "vocab": vocab, "unk_token": "[UNK]",
                     "continuing_subword_prefix": "##", "max_input_chars_per_word": 100},
           "normalizer": None, "pre_tokenizer": {"type": "BertPreTokenizer"},
           "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
           "decoder": None}, open(work + "/tb/tokenizer.json", "w"))
rng = random.Random(3)
rows = ["label\tsentence"]
for _ in range(64):
    pos = rng.random() < 0.5
    t = rng.choice(["good", "great"] if pos else ["bad", "awful"])
    t += " " + " ".join(rng.choice(w[6:]) for _ in range(rng.randint(2, 8)))
    rows.append(("1" if pos else "0") + "\t" + t)
open(work + "/train.tsv", "w").write("\n".join(rows) + "\n")
PY
}

# Largest |a - b| over the float32 tensors of two safetensors files (same names required).
max_diff() {
  python3 - "$1" "$2" <<'PY'
import array, json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (p, k, v["dtype"])
        s, e = v["data_offsets"]
        a = array.array("f")
        a.frombytes(b[8 + n + s:8 + n + e])
        out[k] = a
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
assert sorted(a) == sorted(b), "different tensor names"
print(max(max((abs(x - y) for x, y in zip(a[k], b[k])), default=0.0) for k in a))
PY
}

fail() { echo "FAIL: $*" >&2; exit 1; }
