"""Token-id fixtures from Hugging Face for the C++ tokenizer tests (tests/text/).

Part "tokens" of tools/make_reference.py:  tools/.venv/bin/python tools/make_reference.py tokens

Writes tests/fixtures/tokens/:
  minilm_sst2.jsonl, minilm_shakespeare.jsonl     all-MiniLM-L6-v2 (tokenizer.json, WordPiece)
  smollm2_sst2.jsonl, smollm2_shakespeare.jsonl   SmolLM2-135M-Instruct (GGUF, byte-level BPE)
      one line per input: {"i": line index, "ids": [...], "dec": FNV-1a 64 of the decoded text}
      (ids with special tokens; "dec" hashes decode(ids, skip_special_tokens=True), so the data
      sets themselves are not copied here)
  cases.jsonl     our own tricky strings, sentence pairs (by SST-2 line index), truncation
  bert_unicode.json  the code points that HF's BertNormalizer / BertPreTokenizer treat as control,
                     accent (stripped) and punctuation, as ranges, for an exhaustive C++ check
  meta.json       versions and what was verified

Inputs: SST-2 dev (column "content", all 872 rows) and the first 1000 lines of Tiny Shakespeare
from data/ (tools/fetch_data.sh), the models from tools/fetch_models.sh.

SmolLM2: the reference is transformers' GGUF loader (AutoTokenizer.from_pretrained(dir,
gguf_file=...)). For tokenizer.ggml.pre = "smollm" it builds a plain GPT-2 ByteLevel
pre-tokenizer, while SmolLM2's own tokenizer.json (and llama.cpp for "smollm") first splits every
digit: Sequence[Digits(individual_digits=True), ByteLevel]. The two differ only when several
spaces precede a digit ("a  1"). lorafit follows the model's own tokenizer; both variants are
written for the tricky strings ("smollm2" and "smollm2_gguf_hf") and the data-set ids are checked
to be identical under both.
"""
import csv
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")  # tools/fetch_data.sh
N_SHAKESPEARE = 1000


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def read_sst2():
    path = os.path.join(DATA, "sst2", "dev.tsv")
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    header = lines[0].split("\t")
    col = header.index("content")
    rows = [ln.split("\t")[col] for ln in lines[1:] if ln != ""]
    assert len(rows) == 872, len(rows)
    return rows


def read_shakespeare():
    with open(os.path.join(DATA, "tinyshakespeare", "input.txt"), encoding="utf-8", newline="") as f:
        return f.read().split("\n")[:N_SHAKESPEARE]


CASES = [
    "Hello, world!",
    "naïve café résumé Ångström",
    "ÉCOLE Straße İstanbul ß ẞ",
    "日本語のテキスト 中文 한국어",
    "emoji 😀👍🏽 🥲 ❤️ 🇫🇷",
    "control\x00chars\x07\x1b here\u200b\ufeff\x7f\x85end",
    "multiple   spaces\t\ttabs",
    "new\nlines\r\n\nend\n",
    "digits 12345 3.14159 1,000,000 2024-11-23 ٣٤ ½",
    "contractions: don't won't it's we're I'm they've she'll he'd",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "[CLS] inside [SEP] text [MASK] [unk]",
    "a  1",
    "in  2 days,   33 cats",
    "   leading and trailing   ",
    "",
    " ",
    "x" * 150,
    "unbelievably antidisestablishmentarianism",
    "Ünïcödé ‘quotes’ “double” — dash … ellipsis",
    "\u00a0nbsp\u2003em space\u3000ideographic",
    "Zalgo: Z̷̢a̴l̶g̵o̸",
    "Ελληνικά Русский العربية עברית हिन्दी ไทย",
    "tab\tseparated\tvalues",
    "😀😀😀",
    "mixed<|im_end|>token",
    "  <|im_start|>  spaced ",
    "cafe\u0301 (combining)",
    "\ufffd replacement",
    "ﬁ ligature ① ㎏",
    "¡Hola! ¿Qué tal?",
    "C++ & C# | a->b <= c ~ d ^ e",
    "email@example.com https://x.y/z?q=1#f",
    "1st 2nd 3rd 10th",
    "   \n   ",
    "the quick brown fox jumps over the lazy dog " * 3,
    "I said: \"It's 5 o'clock.\"  'Quoted'",
    "\U0002B820\U0002B920 \u3400 \uf900",
]

# (text a, text b, max_length) for pairs; ints index SST-2 dev rows.
PAIRS = [
    ("How old are you?", "I am six years old.", 0),
    (0, 1, 0),
    (2, 3, 0),
    (1, 0, 16),
    (0, 1, 16),
    (5, 7, 10),
    (4, 6, 7),
    ("short", 1, 12),
    (1, "short", 12),
    (3, 5, 3),
    ("a", "b", 4),
    ("", 2, 9),
]
# (text or SST-2 row, max_length) for single-sequence truncation.
SINGLE_TRUNC = [(1, 8), (1, 16), (0, 3), ("Hello, world!", 5), (3, 2), ("", 4), (2, 40)]


def main(fixtures_dir, models_dir):
    import tokenizers
    import transformers
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from transformers import AutoTokenizer

    out_dir = os.path.join(fixtures_dir, "tokens")
    os.makedirs(out_dir, exist_ok=True)
    sst2 = read_sst2()
    shakespeare = read_shakespeare()

    # --- the tokenizers -------------------------------------------------------------------
    minilm_dir = os.path.join(models_dir, "all-MiniLM-L6-v2")
    if not os.path.isfile(os.path.join(minilm_dir, "tokenizer.json")):
        sys.exit("ref_tokens: models/ is missing; run tools/fetch_models.sh first")
    minilm = Tokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"))
    minilm.no_truncation()  # tokenizer.json asks for 128-token truncation + padding; we test both apart
    minilm.no_padding()
    minilm_tf = AutoTokenizer.from_pretrained(minilm_dir)

    smol_dir = os.path.join(models_dir, "SmolLM2-135M-Instruct")
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    smol_tf = AutoTokenizer.from_pretrained(smol_dir, gguf_file=gguf_name)
    smol_gguf = Tokenizer.from_str(smol_tf.backend_tokenizer.to_str())
    smol_gguf.no_truncation()
    smol_gguf.no_padding()
    smol_hub = Tokenizer.from_str(smol_tf.backend_tokenizer.to_str())
    smol_hub.no_truncation()
    smol_hub.no_padding()
    smol_hub.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    gguf_pre = json.loads(smol_tf.backend_tokenizer.to_str())["pre_tokenizer"]

    toks = {"minilm": minilm, "smollm2": smol_hub, "smollm2_gguf_hf": smol_gguf}

    # --- data sets ------------------------------------------------------------------------
    summary = {}
    for tname, tok, tf in (("minilm", minilm, minilm_tf), ("smollm2", smol_hub, smol_tf)):
        for dname, rows in (("sst2", sst2), ("shakespeare", shakespeare)):
            lines = []
            n_tf_same = n_gguf_same = 0
            for i, text in enumerate(rows):
                ids = tok.encode(text).ids
                # The transformers tokenizer (what users call) must agree with the raw one.
                if tf(text)["input_ids"] == ids:
                    n_tf_same += 1
                if tname == "smollm2" and smol_gguf.encode(text).ids == ids:
                    n_gguf_same += 1
                dec = tok.decode(ids, skip_special_tokens=True)
                lines.append(json.dumps({"i": i, "ids": ids, "dec": fnv1a64(dec)}, separators=(",", ":")))
            assert n_tf_same == len(rows), f"{tname}/{dname}: transformers differs on {len(rows) - n_tf_same} rows"
            if tname == "smollm2":
                assert n_gguf_same == len(rows), f"smollm2/{dname}: GGUF-loader ids differ on {len(rows) - n_gguf_same} rows"
            path = os.path.join(out_dir, f"{tname}_{dname}.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            summary[f"{tname}_{dname}"] = {"rows": len(rows), "bytes": os.path.getsize(path)}

    # --- tricky strings, pairs, truncation ------------------------------------------------
    def text_of(x):
        return sst2[x] if isinstance(x, int) else x

    def ref_of(x, key):
        return {key + "_sst2": x} if isinstance(x, int) else {key: x}

    cases = []
    for tname, tok in toks.items():
        for text in CASES:
            for add_special in (True, False):
                enc = tok.encode(text, add_special_tokens=add_special)
                cases.append({
                    "tok": tname, "kind": "single", "a": text, "add_special": add_special,
                    "ids": enc.ids, "type_ids": enc.type_ids,
                    "decoded": tok.decode(enc.ids, skip_special_tokens=True),
                    "decoded_keep_special": tok.decode(enc.ids, skip_special_tokens=False),
                })
        for a, b, max_len in PAIRS:
            for add_special in (True, False):
                if max_len:
                    tok.enable_truncation(max_len, strategy="longest_first")
                enc = tok.encode(text_of(a), text_of(b), add_special_tokens=add_special)
                tok.no_truncation()
                c = {"tok": tname, "kind": "pair", "add_special": add_special, "max_length": max_len,
                     "ids": enc.ids, "type_ids": enc.type_ids}
                c.update(ref_of(a, "a"))
                c.update(ref_of(b, "b"))
                cases.append(c)
        for a, max_len in SINGLE_TRUNC:
            tok.enable_truncation(max_len, strategy="longest_first")
            enc = tok.encode(text_of(a))
            tok.no_truncation()
            c = {"tok": tname, "kind": "single", "add_special": True, "max_length": max_len,
                 "ids": enc.ids, "type_ids": enc.type_ids}
            c.update(ref_of(a, "a"))
            cases.append(c)
    # Truncation through transformers must agree with the raw tokenizers call used above.
    for a, b, max_len in PAIRS:
        if max_len and max_len > 3:
            want = [c for c in cases if c["tok"] == "minilm" and c["kind"] == "pair" and c["add_special"]
                    and c["max_length"] == max_len and c.get("a", c.get("a_sst2")) == a
                    and c.get("b", c.get("b_sst2")) == b][0]["ids"]
            got = minilm_tf(text_of(a), text_of(b), truncation="longest_first", max_length=max_len)["input_ids"]
            assert got == want, (a, b, max_len, got, want)
    with open(os.path.join(out_dir, "cases.jsonl"), "w", encoding="utf-8") as f:
        for c in cases:
            f.write(json.dumps(c, ensure_ascii=True, separators=(",", ":")) + "\n")

    # --- BERT's Unicode predicates, exhaustively ----------------------------------------------
    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                       strip_accents=False, lowercase=False)
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                       strip_accents=True, lowercase=False)
    bert_pre = pre_tokenizers.BertPreTokenizer()

    def ranges(cps):
        out = []
        for c in cps:
            if out and out[-1][1] == c - 1:
                out[-1][1] = c
            else:
                out.append([c, c])
        return out

    control, stripped, punct = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if clean.normalize_str(ch) == "":
            control.append(cp)
        if strip.normalize_str(ch) == "":
            stripped.append(cp)
        if ch.isspace() or cp in (0x1C, 0x1D, 0x1E, 0x1F):
            continue
        parts = bert_pre.pre_tokenize_str("a" + ch + "b")
        if len(parts) == 3 and parts[1][0] == ch:
            punct.append(cp)
    with open(os.path.join(out_dir, "bert_unicode.json"), "w", encoding="utf-8") as f:
        json.dump({"control": ranges(control), "stripped": ranges(stripped), "punctuation": ranges(punct)},
                  f, separators=(",", ":"))
        f.write("\n")

    meta = {
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
        "smollm2_gguf_loader_pre_tokenizer": gguf_pre,
        "smollm2_reference": "transformers GGUF loader vocab/merges/added tokens with the "
                             "pre-tokenizer Sequence[Digits(individual_digits=True), ByteLevel] "
                             "of SmolLM2's tokenizer.json; data-set ids identical to the GGUF loader's",
        "datasets": summary,
        "cases": len(cases),
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"[ref_tokens] wrote {out_dir}: {summary}, {len(cases)} cases")


if __name__ == "__main__":
    main(os.path.join(ROOT, "tests", "fixtures"), os.path.join(ROOT, "models"))
