#!/usr/bin/env python3
"""Checks that an adapter trained by `lorafit train` on a real classification model loads in
Hugging Face PEFT unchanged and predicts what lorafit predicts.

  tools/.venv/bin/python tools/check_trained_adapter.py --model models/all-MiniLM-L6-v2 \
      --adapter runs/sst2-lora-3e-3/final --data data/sst2/dev.tsv [--n 64] [--lorafit build/lorafit]

1. `PeftModel.from_pretrained(AutoModelForSequenceClassification(base), adapter)`; asserts that
   set_peft_model_state_dict reports no unexpected keys and that get_peft_model_state_dict gives
   back exactly the file's keys and values (so nothing in the file was ignored and nothing the
   adapter needs is missing),
2. runs `lorafit predict` on the first N rows of the data file,
3. asserts PEFT's class probabilities (HF tokenizer, max length 128) equal lorafit's within 1e-4,
   and the predicted labels agree.
Exit status 0 only when every check passes.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True, help="TSV with a header; the text column is detected")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--lorafit", default="build/lorafit")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()

    import torch
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with open(a.data, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[: a.n]
    col = next((c for c in ("sentence", "content", "text") if c in rows[0]), None)
    if col is None:
        sys.exit(f"{a.data}: no sentence/content/text column in {list(rows[0])}")
    texts = [r[col] for r in rows]

    with tempfile.TemporaryDirectory() as tmp:
        sub = os.path.join(tmp, "data.tsv")
        with open(sub, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
            w.writerow(["sentence"])
            for t in texts:
                w.writerow([t])
        out = os.path.join(tmp, "pred.tsv")
        subprocess.run([a.lorafit, "predict", "--model", a.model, "--adapter", a.adapter, "--data", sub,
                        "--output", out, "--threads", "1"], check=True, stdout=subprocess.DEVNULL)
        with open(out, newline="") as f:
            pred = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    pcols = [c for c in pred[0] if c.startswith("p_") or c.startswith("prob")]
    ours = torch.tensor([[float(r[c]) for c in pcols] for r in pred], dtype=torch.float64)

    base = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=ours.shape[1])
    pm = PeftModel.from_pretrained(base, a.adapter)
    pm.eval()
    file_sd = load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    res = set_peft_model_state_dict(pm, file_sd)
    unexpected = [k for k in res.unexpected_keys]
    back = get_peft_model_state_dict(pm)
    assert not unexpected, f"unexpected keys: {unexpected[:5]}"
    assert set(back) == set(file_sd), f"keys differ: {sorted(set(back) ^ set(file_sd))[:5]}"
    for k, v in file_sd.items():
        assert torch.equal(back[k].to(v.dtype), v), f"{k}: PEFT holds different values"

    tok = AutoTokenizer.from_pretrained(a.model)
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        theirs = torch.softmax(pm(**enc).logits.double(), dim=-1)
    err = (theirs - ours).abs().max().item()
    agree = int((theirs.argmax(-1) == ours.argmax(-1)).sum())
    print(f"{a.adapter}: {len(file_sd)} tensors loaded by PeftModel.from_pretrained, no missing/unexpected "
          f"keys; {len(texts)} sentences of {os.path.basename(a.data)}: max |p PEFT - p lorafit| = {err:.2e} "
          f"(tol {a.tol:g}), predicted labels agree on {agree}/{len(texts)}")
    if err > a.tol or agree != len(texts):
        sys.exit(1)


if __name__ == "__main__":
    main()
