#!/usr/bin/env python3
"""PyTorch + PEFT side of bench/side_by_side.sh. Prints one JSON line per run.

Workloads (the same ones lorafit runs in side_by_side.sh):
  minilm  all-MiniLM-L6-v2 as a 2-way classifier on SST-2, LoRA r=8 alpha 16 on query,value,
          dropout 0, transformers.Trainer, MAX_STEPS x 32, lr 3e-3 linear with 6% warmup,
          weight decay 0.01 (lorafit's defaults), dynamic padding to the longest in the batch,
          sentences cut at 128 tokens; --sampler default|group_by_length. Reports the training
          time (Trainer's own train_runtime), dev accuracy on the whole dev set, peak RSS.
  lm      a Llama-family HF folder (SmolLM2-135M F32 from tools/make_smollm2_hf.py), LoRA r=8
          alpha 16 on all linear layers (or DoRA), dropout 0, AdamW, blocks of --block tokens of
          Tiny Shakespeare, --batch blocks per step; --dtype fp32|bf16 (torch.autocast on CPU);
          --quant nf4 puts the frozen base in bitsandbytes NF4 with double quantization (QLoRA);
          --gradient-checkpointing recomputes each layer in the backward.
          Median time of --steps steps after --warmup steps; tokens/s = batch*block/median.

  python bench/torch_train.py minilm --threads 2 --sampler group_by_length
  python bench/torch_train.py lm --model runs/smollm2-f32 --threads 2 --dtype bf16
"""
import argparse
import json
import os
import statistics
import sys
import time


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def read_tsv(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        # train.tsv: label<TAB>sentence; dev.tsv: label<TAB>content (tools/fetch_data.sh)
        si = header.index("sentence") if "sentence" in header else header.index("content")
        li = header.index("label")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) > max(si, li):
                rows.append((parts[si], int(parts[li])))
    return rows


def run_minilm(a):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorWithPadding, Trainer, TrainingArguments)

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    train = read_tsv(os.path.join(a.data, "train.tsv"))
    dev = read_tsv(os.path.join(a.data, "dev.tsv"))

    class DS(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.enc = [tok(s, truncation=True, max_length=128) for s, _ in rows]
            self.labels = [y for _, y in rows]

        def __len__(self):
            return len(self.enc)

        def __getitem__(self, i):
            d = dict(self.enc[i])
            d["labels"] = self.labels[i]
            return d

    train_ds = DS(train)
    dev_ds = DS(dev)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                     task_type="SEQ_CLS", use_dora=a.method == "dora")
    model = get_peft_model(model, cfg)
    kw = dict(output_dir=a.out, max_steps=a.max_steps, per_device_train_batch_size=32,
              per_device_eval_batch_size=64, learning_rate=3e-3, lr_scheduler_type="linear",
              warmup_steps=0.06, weight_decay=0.01,  # transformers 5: a float < 1 is a ratio
              max_grad_norm=1.0, logging_steps=50,
              save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, seed=42,
              dataloader_num_workers=0, disable_tqdm=True)
    if a.sampler == "group_by_length":
        kw["train_sampling_strategy"] = "group_by_length"
    args = TrainingArguments(**kw)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tok))
    t0 = time.perf_counter()
    # Trainer prints its log dicts to stdout (PrinterCallback with tqdm off): keep stdout for our
    # one JSON line.
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):
        out = trainer.train()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        pred = trainer.predict(dev_ds)
    eval_s = time.perf_counter() - t1
    acc = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
    print(json.dumps({"side": "pytorch", "workload": "minilm", "sampler": a.sampler,
                      "method": a.method, "threads": a.threads, "train_s": train_s,
                      "train_runtime": out.metrics.get("train_runtime"), "eval_s": eval_s,
                      "dev_accuracy": acc, "peak_rss_bytes": peak_rss_bytes()}))


def run_lm(a):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model)
    kw = {"torch_dtype": torch.float32}
    if a.quant == "nf4":
        from transformers import BitsAndBytesConfig
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if a.dtype == "bf16" else torch.float32)
        kw["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(a.model, **kw)
    if a.quant == "nf4":
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=a.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                     task_type="CAUSAL_LM", use_dora=a.method == "dora")
    model = get_peft_model(model, cfg)
    model.train()
    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    ids = tok(text[: 200 * a.block * a.batch], return_tensors="pt")["input_ids"][0]
    need = (a.warmup + a.steps) * a.batch * a.block
    while ids.numel() < need:
        ids = torch.cat([ids, ids])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4,
                            weight_decay=0.01)
    times = []
    losses = []
    for step in range(a.warmup + a.steps):
        off = step * a.batch * a.block
        x = ids[off: off + a.batch * a.block].view(a.batch, a.block)
        t0 = time.perf_counter()
        if a.dtype == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=x, labels=x).loss
        else:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if step >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({"side": "pytorch", "workload": "lm", "method": a.method, "dtype": a.dtype,
                      "quant": a.quant, "threads": a.threads, "batch": a.batch, "block": a.block,
                      "gradient_checkpointing": a.gradient_checkpointing,
                      "step_s_median": med, "tokens_per_s": a.batch * a.block / med,
                      "first_loss": losses[0], "last_loss": losses[-1],
                      "peak_rss_bytes": peak_rss_bytes()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["minilm", "lm"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", choices=["lora", "dora"], default="lora")
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="data/sst2")
    ap.add_argument("--text", default="data/tinyshakespeare/input.txt")
    ap.add_argument("--out", default=os.environ.get("TMPDIR", "/tmp") + "/torch_train_out")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--sampler", choices=["default", "group_by_length"], default="default")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--quant", choices=["none", "nf4"], default="none")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="lm: recompute each layer in the backward (transformers' non-reentrant "
                         "checkpointing; with --quant nf4 through prepare_model_for_kbit_training)")
    a = ap.parse_args()
    if a.model is None:
        a.model = "models/all-MiniLM-L6-v2" if a.workload == "minilm" else "runs/smollm2-f32"
    if not os.path.exists(os.path.join(a.model, "config.json")):
        sys.exit(f"torch_train: {a.model}/config.json not found")
    run_minilm(a) if a.workload == "minilm" else run_lm(a)


if __name__ == "__main__":
    main()
