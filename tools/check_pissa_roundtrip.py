#!/usr/bin/env python3
"""Checks that Hugging Face PEFT loads PiSSA / OLoRA adapters *trained by lorafit* with lorafit's
logits (interop stage of CI).

  /root/.cache/lorafit/venv/bin/python tools/check_pissa_roundtrip.py [BUILD_DIR]   (default build)

For each case it
  1. trains with `lorafit train --init-lora-weights <init>` (pissa, olora, pissa_niter_4: saved as
     "pissa", the exact SVD lorafit computed) on a tiny base (tests/fixtures/models
     tiny_llama / tiny_bert with the WordPiece tokenizer of tests/fixtures/pissa), a few steps,
  2. runs `lorafit logits --adapter <run>/final --out ...` on three prompts (the user's path),
  3. loads <run>/final with PeftModel.from_pretrained (PEFT runs the init on the base once, then
     loads A and B) and asserts PEFT's logits equal lorafit's (max abs error <= 1e-5),
  4. converts the run with `lorafit adapter convert-to-lora` and asserts PEFT, loading that plain
     LoRA on the *original* base, gives the same logits (<= 1e-4: the conversion adds B0 A0 back
     in float).
Exit status 0 only when every check passes.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
PROMPTS = ["the movie was very good", "bad plot", "it is not a fine film and the story was bad"]

CASES = [
    # name, base, init, extra train flags, data kind
    ("llama_pissa", "tiny_llama", "pissa", ["--target-modules", "q_proj,v_proj,o_proj"], "txt"),
    ("llama_olora", "tiny_llama", "olora", ["--target-modules", "q_proj,v_proj"], "txt"),
    ("llama_pissa_niter", "tiny_llama", "pissa_niter_4", ["--target-modules", "q_proj,v_proj"], "txt"),
    ("bert_pissa", "tiny_bert", "pissa", ["--target-modules", "query,value"], "tsv"),
]


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit(f"check_pissa_roundtrip: {' '.join(cmd)} failed:\n{r.stdout}")
    return r.stdout


def peft_logits(model_dir, adapter_dir, kind, ids_list):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    cls = AutoModelForCausalLM if kind == "llama" else AutoModelForSequenceClassification
    m = cls.from_pretrained(model_dir, attn_implementation="eager").float().eval()
    pm = PeftModel.from_pretrained(m, adapter_dir).eval()
    with torch.no_grad():
        return [pm(input_ids=ids[None].long()).logits[0] for ids in ids_list]


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build")
    lorafit = os.path.join(build, "lorafit")
    worst = 0.0
    with tempfile.TemporaryDirectory() as d:
        for name, base, init, flags, data in CASES:
            kind = "llama" if base == "tiny_llama" else "bert"
            mdir = os.path.join(d, name, "model")
            os.makedirs(mdir)
            for f in ("config.json", "model.safetensors"):
                shutil.copy(os.path.join(FIX, "models", base, f), mdir)
            shutil.copy(os.path.join(FIX, "pissa", "tokenizer.json"), mdir)
            if data == "txt":
                train = os.path.join(d, name, "train.txt")
                with open(train, "w") as f:
                    f.write("the movie was very good but the plot was bad and it is not a fine film\n" * 40)
            else:
                train = os.path.join(d, name, "train.tsv")
                with open(train, "w") as f:
                    f.write("sentence\tlabel\n")
                    for i in range(48):
                        f.write(["the movie was very good\tpos\n", "bad plot\tneg\n",
                                 "it is a film\tneutral\n"][i % 3])
            out = os.path.join(d, name, "run")
            run([lorafit, "train", "--model", mdir, "--train", train, "--output", out,
                 "--init-lora-weights", init, "--lora-r", "4", "--max-steps", "8",
                 "--batch-size", "4", "--block-size", "8", "--lr", "1e-2", "--lora-dropout", "0",
                 "--quiet"] + flags)
            final = os.path.join(out, "final")
            cfg = json.load(open(os.path.join(final, "adapter_config.json")))
            # lorafit factors "pissa_niter_K" by the exact SVD and saves it as "pissa", so PEFT's
            # load (exact SVD) gives the residual it was trained on.
            saved = "pissa" if init.startswith("pissa_niter") else init
            assert cfg["init_lora_weights"] == saved, f"{name}: saved init {cfg['init_lora_weights']!r}"
            lf = os.path.join(d, name, "logits.safetensors")
            cmd = [lorafit, "logits", "--model", mdir, "--adapter", final, "--out", lf]
            for p in PROMPTS:
                cmd += ["--prompt", p]
            run(cmd)
            ours = load_file(lf)
            ids = [ours[f"ids.{i}"] for i in range(len(PROMPTS))]
            theirs = peft_logits(mdir, final, kind, ids)
            err = max((theirs[i] - ours[f"logits.{i}"]).abs().max().item() for i in range(len(PROMPTS)))
            # The plain-LoRA conversion on the original base.
            conv = os.path.join(d, name, "lora")
            run([lorafit, "adapter", "convert-to-lora", final, "--base", mdir, "--out", conv])
            ccfg = json.load(open(os.path.join(conv, "adapter_config.json")))
            assert ccfg["init_lora_weights"] is True and ccfg["r"] == 2 * cfg["r"], f"{name}: {ccfg}"
            conv_l = peft_logits(mdir, conv, kind, ids)
            cerr = max((conv_l[i] - ours[f"logits.{i}"]).abs().max().item() for i in range(len(PROMPTS)))
            print(f"{name}: --init-lora-weights {init} (saved {saved!r}), {len(cfg['target_modules'])} target "
                  f"names; max |logits PEFT - lorafit| = {err:.3g}; converted LoRA (r {ccfg['r']}) on the "
                  f"original base in PEFT: {cerr:.3g}")
            assert err <= 1e-5, f"{name}: PEFT's logits differ from lorafit's by {err}"
            worst = max(worst, err, cerr)
            assert cerr <= 1e-4, f"{name}: converted LoRA logits differ by {cerr}"
    print(f"check_pissa_roundtrip: OK ({len(CASES)} runs, worst {worst:.3g})")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
