#!/usr/bin/env python3
"""PEFT's own AdaLoRA (and LoRA, for the baseline) on MiniLM SST-2, to check lorafit's AdaLoRA
settings against PEFT: the same budget (STEPS x 32 sentences, cut at 128 tokens), AdamW lr with
linear decay after 6% warmup, weight decay 0.01, clipping 1.0, dropout 0.1, classifier trained,
query/value targets; a manual loop exactly as PEFT documents AdaLoRA: loss (with the orthogonal
regularization PEFT adds) .backward(); optimizer.step(); scheduler.step();
model.base_model.update_and_allocate(global_step); zero_grad(). Prints one JSON line with the
dev accuracy (all 872 sentences).

  python bench/peft_adalora_sst2.py --method adalora --tinit 36 --tfinal 132 --delta-t 1 \
      --orth-reg-weight 0.1 --lr 3e-3 --steps 300 --threads 1
  python bench/peft_adalora_sst2.py --method lora --lr 3e-3 --steps 300 --threads 1

Batches are drawn by torch's own shuffling (not lorafit's order): compare methods within one
side, not single runs across sides.
"""
import argparse
import json
import os
import sys
import time


def read_tsv(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")  # the column names lorafit detects
        si = next(header.index(c) for c in ("sentence", "content", "text") if c in header)
        li = header.index("label")
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) > max(si, li):
                rows.append((parts[si], int(parts[li])))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["lora", "adalora"], default="adalora")
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--data", default="data/sst2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init-r", type=int, default=12)
    ap.add_argument("--target-r", type=int, default=8)
    ap.add_argument("--tinit", type=int, default=0)
    ap.add_argument("--tfinal", type=int, default=0)
    ap.add_argument("--delta-t", type=int, default=1)
    ap.add_argument("--orth-reg-weight", type=float, default=0.5)
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.model, "config.json")):
        sys.exit(f"peft_adalora_sst2: {a.model}/config.json not found (tools/fetch_models.sh)")

    import torch
    from peft import AdaLoraConfig, LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import get_linear_schedule_with_warmup

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model)
    train = read_tsv(os.path.join(a.data, "train.tsv"))
    dev = read_tsv(os.path.join(a.data, "dev.tsv"))
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    common = dict(lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                  task_type="SEQ_CLS")
    if a.method == "adalora":
        cfg = AdaLoraConfig(init_r=a.init_r, target_r=a.target_r, tinit=a.tinit, tfinal=a.tfinal,
                            deltaT=a.delta_t, beta1=0.85, beta2=0.85,
                            orth_reg_weight=a.orth_reg_weight, total_step=a.steps, **common)
    else:
        cfg = LoraConfig(r=8, **common)
    model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * a.steps + 0.999999), a.steps)
    g = torch.Generator().manual_seed(a.seed)
    order = []
    t0 = time.perf_counter()
    model.train()
    for step in range(a.steps):
        if len(order) < a.batch:
            order += torch.randperm(len(train), generator=g).tolist()
        idx, order = order[:a.batch], order[a.batch:]
        enc = tok([train[i][0] for i in idx], truncation=True, max_length=128, padding=True,
                  return_tensors="pt")
        labels = torch.tensor([train[i][1] for i in idx])
        loss = model(**enc, labels=labels).loss  # PEFT adds the orthogonal regularization
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if a.method == "adalora":
            model.base_model.update_and_allocate(step)
        opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            chunk = dev[i:i + 64]
            enc = tok([s for s, _ in chunk], truncation=True, max_length=128, padding=True,
                      return_tensors="pt")
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor([y for _, y in chunk])).sum())
    out = {"side": "peft", "method": a.method, "lr": a.lr, "steps": a.steps, "seed": a.seed,
           "trainable": trainable, "dev_accuracy": correct / len(dev), "train_s": train_s}
    if a.method == "adalora":
        out.update(init_r=a.init_r, target_r=a.target_r, tinit=a.tinit, tfinal=a.tfinal,
                   deltaT=a.delta_t, orth_reg_weight=a.orth_reg_weight)
        rp = model.peft_config["default"].rank_pattern or {}
        out["final_rank_budget"] = sum(sum(1 for b in m if b) for m in rp.values())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
