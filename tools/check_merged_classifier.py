#!/usr/bin/env python3
"""Checks that a MiniLM classifier merged by `lorafit adapter merge` loads in transformers as a
classifier and predicts as `lorafit predict` does (interop stage of CI).

  /root/.cache/lorafit/venv/bin/python tools/check_merged_classifier.py [BUILD_DIR] [SST2_DIR]
      (defaults: build, data/sst2 from tools/fetch_data.sh)

  1. `lorafit train` a LoRA (query/value + classifier) on models/all-MiniLM-L6-v2, a short run on
     SST-2 (string labels are mapped to ids by sorting, so the run's labels are recorded),
  2. `lorafit adapter merge <run>/final --base models/all-MiniLM-L6-v2 --out merged/`,
  3. `lorafit predict` with the adapter on 200 dev sentences,
  4. AutoModelForSequenceClassification.from_pretrained(merged) + AutoTokenizer: asserts the
     config names the task (architectures, num_labels, id2label = the run's labels), and that the
     probabilities equal lorafit's (max abs error <= 1e-4) and every predicted label is the same.
Exit status 0 only when every check passes.
"""
import csv
import json
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit(f"check_merged_classifier: {' '.join(cmd)} failed:\n{r.stdout}")
    return r.stdout


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build")
    sst2 = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "data", "sst2")  # tools/fetch_data.sh
    lorafit = os.path.join(build, "lorafit")
    base = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    with tempfile.TemporaryDirectory() as d:
        dev = os.path.join(d, "dev.tsv")
        with open(os.path.join(sst2, "dev.tsv")) as f, open(dev, "w") as g:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            header, body = rows[0], rows[1:201]
            g.write("\t".join(header) + "\n")
            for r in body:
                g.write("\t".join(r) + "\n")
        out = os.path.join(d, "run")
        run([lorafit, "train", "--model", base, "--train", os.path.join(sst2, "train.tsv"),
             "--validation", dev, "--output", out, "--max-steps", "40", "--max-train-samples", "2000",
             "--batch-size", "16", "--quiet"])
        final = os.path.join(out, "final")
        labels = json.load(open(os.path.join(final, "lorafit_task.json")))["labels"]
        merged = os.path.join(d, "merged")
        run([lorafit, "adapter", "merge", final, "--base", base, "--out", merged])
        preds = os.path.join(d, "preds.tsv")
        run([lorafit, "predict", "--model", base, "--adapter", final, "--data", dev, "--output", preds])
        with open(preds) as f:
            pr = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        ours_p = torch.tensor([[float(x) for x in r[2:]] for r in pr[1:]])
        ours_y = [r[1] for r in pr[1:]]

        cfg = json.load(open(os.path.join(merged, "config.json")))
        assert cfg["architectures"] == ["BertForSequenceClassification"], cfg["architectures"]
        assert cfg["num_labels"] == len(labels), cfg.get("num_labels")
        assert [cfg["id2label"][str(i)] for i in range(len(labels))] == labels, cfg["id2label"]
        model = AutoModelForSequenceClassification.from_pretrained(merged).float().eval()
        assert type(model).__name__ == "BertForSequenceClassification", type(model).__name__
        assert model.config.num_labels == len(labels)
        tok = AutoTokenizer.from_pretrained(merged)
        col = next(header.index(c) for c in ("sentence", "content", "text") if c in header)
        sents = [r[col] for r in body]
        with torch.no_grad():
            enc = tok(sents, padding=True, truncation=True, max_length=128, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits, dim=-1)
        theirs_y = [model.config.id2label[int(i)] for i in probs.argmax(-1)]
        err = (probs - ours_p).abs().max().item()
        same = sum(a == b for a, b in zip(ours_y, theirs_y))
        print(f"merged MiniLM classifier: {type(model).__name__}, num_labels {model.config.num_labels}, "
              f"id2label {model.config.id2label}; {len(sents)} dev sentences: max |p transformers - p "
              f"lorafit predict| = {err:.3g}, same label {same}/{len(sents)}")
        assert err <= 1e-4, f"probabilities differ by {err}"
        assert same == len(sents), f"labels differ on {len(sents) - same} sentences"
    print("check_merged_classifier: OK")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
