#!/usr/bin/env python3
"""Tables of bench/side_by_side.sh's results.jsonl (markdown, for docs/BENCHMARKS.md), with the
ratios against the strongest PyTorch setting of each workload and the achieved GFLOP/s of our LM
step (FLOPs counted: forward and input gradients of every linear layer and the LM head, the three
products of each LoRA adapter, and attention's QKᵀ and PV forward and backward).

  python bench/side_by_side_table.py runs/side_by_side/results.jsonl [--config runs/smollm2-f32/config.json]
"""
import argparse
import json
import os
import statistics
from collections import defaultdict


def gib(b):
    return f"{b / 2**30:.2f} GiB"


def lm_step_flops(cfg, batch, block, r=8):
    h, f, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = h // nh
    v = cfg["vocab_size"]
    tok = batch * block
    shapes = [(h, nh * hd), (h, nkv * hd), (h, nkv * hd), (nh * hd, h), (h, f), (h, f), (f, h)]
    lin = sum(i * o for i, o in shapes) * L + h * v
    adapter = sum(r * (i + o) for i, o in shapes) * L
    dense = 2 * tok * lin * 2  # forward + input gradient
    lora = 2 * tok * adapter * 3  # forward, input gradient, weight gradients
    attn = 12 * batch * nh * block * block * hd * L  # QKᵀ and PV, forward (4) + backward (8)
    return dense + lora + attn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--config", default="runs/smollm2-f32/config.json")
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.results) if l.strip()]

    mini = [r for r in rows if r["workload"] == "minilm"]
    if mini:
        print("\n### MiniLM SST-2, end to end (training time; dev accuracy on the whole dev set)\n")
        print("| side | sampler | compute | train s | dev accuracy | peak RSS |")
        print("| --- | --- | --- | ---: | ---: | ---: |")
        for r in mini:
            acc = "" if r.get("dev_accuracy") is None else f"{r['dev_accuracy']:.4f}"
            print(f"| {r['side']} | {r['sampler']} | {r.get('dtype', 'fp32')} | {r['train_s']:.1f} | {acc} |"
                  f" {gib(r['peak_rss_bytes'])} |")
        ours = [r for r in mini if r["side"] == "lorafit"]
        theirs = [r for r in mini if r["side"] == "pytorch"]
        if ours and theirs:
            best = min(theirs, key=lambda r: r["train_s"])
            # lorafit's fastest setting against PyTorch's fastest (each compute dtype is a row).
            o = min(r["train_s"] for r in ours)
            orss = max(r["peak_rss_bytes"] for r in ours)
            print(f"\nlorafit is {best['train_s'] / o:.2f}x faster than PyTorch + PEFT's fastest setting"
                  f" ({best['sampler']}); peak RSS {orss / best['peak_rss_bytes']:.2f}x of it.")

    lm = [r for r in rows if r["workload"] == "lm"]
    cfg = None
    if lm and os.path.exists(a.config):
        cfg = json.load(open(a.config))
    groups = defaultdict(list)
    lm_gflops = {}  # LoRA, unquantized base: compute dtype -> our step's GFLOP/s
    for r in lm:
        groups[(r["method"], r["quant"])].append(r)
    for (method, quant), rs in groups.items():
        b0 = rs[0]
        print(f"\n### SmolLM2-135M, {method.upper()} r=8 all-linear, batch {b0.get('batch', 4)} x"
              f" {b0.get('block', 256)}, base {quant}\n")
        print("| side | compute | tokens/s (median over runs) | peak RSS | GFLOP/s |")
        print("| --- | --- | ---: | ---: | ---: |")
        by = defaultdict(list)
        for r in rs:
            by[(r["side"], r["dtype"])].append(r)
        tps = {}
        for (side, dt), xs in sorted(by.items()):
            t = statistics.median(x["tokens_per_s"] for x in xs)
            tps[(side, dt)] = t
            peak = max(x["peak_rss_bytes"] for x in xs)
            gf = ""
            if cfg and side == "lorafit" and t > 0:
                bt, bl = xs[0].get("batch", 4), xs[0].get("block", 256)
                fl = lm_step_flops(cfg, bt, bl)
                g = fl / (bt * bl / t) / 1e9
                gf = f"{g:.0f}"
                if method == "lora" and quant == "none":
                    lm_gflops[dt] = g
            print(f"| {side} | {dt} | {t:.0f} | {gib(peak)} | {gf} |")
        ours = [v for (s, _), v in tps.items() if s == "lorafit"]
        theirs = {k: v for k, v in tps.items() if k[0] == "pytorch"}
        if ours and theirs:
            (_, bdt), bv = max(theirs.items(), key=lambda kv: kv[1])
            print(f"\nlorafit's best: {max(ours) / bv:.2f}x PyTorch + PEFT's best ({bdt});"
                  + (f" fp32 against fp32: {tps[('lorafit', 'fp32')] / theirs[('pytorch', 'fp32')]:.2f}x."
                     if ("pytorch", "fp32") in theirs and ("lorafit", "fp32") in tps else ""))

    gm = [r for r in rows if r["workload"] == "gemm"]
    if gm:
        print("\n### The step's dense products as raw library calls (build/bench_step_gemm)\n")
        print("Forward and input gradient of every frozen linear layer (and the LM head) on the"
              " step's shapes; cblas = cblas_sgemm fp32, bf16 = lorafit's gemm_bf16 (A rounded to"
              " BF16 per call + oneDNN matmul).\n")
        print("| model | library | tokens | s per step | GFLOP/s |")
        print("| --- | --- | ---: | ---: | ---: |")
        for r in gm:
            print(f"| {r['name']} | {r['side']} | {r['tokens']} | {r['step_gemm_s']:.3f} | {r['gflops']:.0f} |")
        raw = {r["side"]: r["gflops"] for r in gm if r["name"] == "smollm2"}
        if lm_gflops and raw:
            for dt, g in sorted(lm_gflops.items()):
                lib = "bf16" if dt == "bf16" else "cblas"
                if lib in raw:
                    print(f"\nlorafit {dt} LoRA step: {g:.0f} GFLOP/s = {100 * g / raw[lib]:.0f}% of the raw"
                          f" {lib} products on the same shapes ({raw[lib]:.0f}).")


if __name__ == "__main__":
    main()
