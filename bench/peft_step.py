#!/usr/bin/env python3
"""PyTorch + PEFT side of bench/compare_peft.sh: the same training step as bench_dora's
BM_MiniLMStep, in transformers + PEFT on the CPU.

Model all-MiniLM-L6-v2 (models/, tools/fetch_models.sh) as a 2-way sequence classifier, adapter
r = 8, alpha 16 on query and value (LoRA or DoRA), lora_B random (as the C++ benchmark: B != 0 so
DoRA's norms are not ||W||), batch 32 x 64 tokens with the same ids and an all-ones mask; one step =
forward + backward of sum(logits * dlogits) with dlogits[b, b % 2] = 1/32, gradients zeroed before.
Prints one line: method, dropout, threads, ms/step (median), tokens/s, peak RSS of the timed loop.

  tools/.venv/bin/python bench/peft_step.py --method lora|dora [--dropout 0.1] [--threads 1]
"""
import argparse
import os
import statistics
import sys
import time


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    return 0.0


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["lora", "dora"], default="lora")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default=os.environ.get("LORAFIT_MINILM", "models/all-MiniLM-L6-v2"))
    a = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if not os.path.exists(os.path.join(a.model, "config.json")):
        sys.exit(f"peft_step: {a.model}/config.json not found (run tools/fetch_models.sh)")
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=a.dropout, target_modules=["query", "value"],
                     task_type="SEQ_CLS", use_dora=a.method == "dora")
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.02)
    pm.train()

    B, T = 32, 64
    ids = torch.tensor([[1000 + (b * 131 + t * 17) % 20000 for t in range(T)] for b in range(B)])
    mask = torch.ones(B, T, dtype=torch.long)
    dlogits = torch.zeros(B, 2)
    for b in range(B):
        dlogits[b, b % 2] = 1.0 / B

    def step():
        pm.zero_grad(set_to_none=False)
        logits = pm(input_ids=ids, attention_mask=mask).logits
        (logits * dlogits).sum().backward()

    for _ in range(2):  # warm-up
        step()
    reset_peak_rss()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    print(f"peft {a.method} dropout={a.dropout:g} threads={a.threads} torch={torch.__version__}: "
          f"{ms:.1f} ms/step, {B * T / (ms / 1e3):.0f} tokens/s, peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
