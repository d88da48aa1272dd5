#!/usr/bin/env python3
"""QLoRA interop on a real model (interop stage of CI): transformers + bitsandbytes 0.50 (CPU)
and lorafit read each other's 4-bit folders and agree on the logits.

  /root/.cache/lorafit/venv/bin/python tools/check_bnb4_interop.py [BUILD_DIR] [MODEL_DIR]
      (defaults: build, models/SmolLM2-135M-Instruct from tools/fetch_models.sh)

  1. `lorafit quantize MODEL --type T --output ours_T/` for T in nf4-dq, nf4, fp4;
     AutoModelForCausalLM.from_pretrained(ours_T) (bitsandbytes Linear4bit, fp32 compute) and
     `lorafit logits --model ours_T` give the same logits (max abs error <= 5e-4: both dequantize
     the same codes exactly; only the fp32 summation order differs);
  2. transformers quantizes MODEL itself (BitsAndBytesConfig nf4, double quant) and
     save_pretrained(theirs/): `lorafit logits --model theirs` equals PyTorch's logits of that
     model, and the packed weights equal ours_nf4-dq's byte for byte;
  3. a PEFT LoRA trained 4 steps with bitsandbytes QLoRA on that model (r 8, all linear):
     `lorafit logits --model theirs --adapter qlora/` equals PEFT's logits.
Exit status 0 only when every check passes.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["The capital of France is", "def fib(n):\n    return"]
TOL = 5e-4


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit(f"check_bnb4_interop: {' '.join(cmd)} failed:\n{r.stdout}")
    return r.stdout


def lorafit_logits(lorafit, model, out, adapter=None):
    cmd = [lorafit, "logits", "--model", model, "--out", out]
    for p in PROMPTS:
        cmd += ["--prompt", p]
    if adapter:
        cmd += ["--adapter", adapter]
    run(cmd)
    from safetensors.torch import load_file
    t = load_file(out)
    return [(t[f"ids.{i}"].long(), t[f"logits.{i}"]) for i in range(len(PROMPTS))]


def torch_logits(model, ours):
    errs = []
    with torch.no_grad():
        for ids, logits in ours:
            ref = model(input_ids=ids[None]).logits[0].float()
            errs.append((ref - logits).abs().max().item())
    return max(errs)


def fp32_kernels(model):
    """bitsandbytes 0.50 switches a Linear4bit in eval mode on a CPU with AVX512-BF16 to a
    repacked layout with bf16 absmax and bf16 arithmetic; the generic path dequantizes to fp32
    and multiplies in fp32, as lorafit does (and as on a CPU without AVX512-BF16)."""
    for mod in model.modules():
        if type(mod).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4"):
            mod.support_avx512bf16_for_cpu = False
    return model


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build")
    base = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct")
    lorafit = os.path.join(build, "lorafit")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    kw = dict(dtype=torch.float32, device_map="cpu", attn_implementation="eager")
    with tempfile.TemporaryDirectory() as d:
        # 1. our folders in transformers
        for t in ("nf4-dq", "nf4", "fp4"):
            ours = os.path.join(d, "ours_" + t)
            print(run([lorafit, "quantize", base, "--type", t, "--output", ours]).strip())
            qc = json.load(open(os.path.join(ours, "config.json")))["quantization_config"]
            assert qc["quant_method"] == "bitsandbytes" and qc["load_in_4bit"], qc
            m = fp32_kernels(AutoModelForCausalLM.from_pretrained(ours, **kw).eval())
            n4 = sum(1 for mod in m.modules() if type(mod).__name__ == "Linear4bit")
            assert n4 > 0, "transformers made no Linear4bit from our folder"
            err = torch_logits(m, lorafit_logits(lorafit, ours, os.path.join(d, "l.safetensors")))
            print(f"[bnb4] {t}: transformers loads lorafit quantize's folder ({n4} Linear4bit); "
                  f"max |logits torch - lorafit| = {err:.3g} (tol {TOL:g})")
            assert err <= TOL, f"{t}: logits differ by {err}"
            del m
        # 2. transformers' folder in lorafit
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
        m = fp32_kernels(AutoModelForCausalLM.from_pretrained(base, quantization_config=bnb, **kw).eval())
        theirs = os.path.join(d, "theirs")
        m.save_pretrained(theirs)
        for f in os.listdir(base):  # save_pretrained writes no tokenizer: lorafit needs one
            if f.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(os.path.join(base, f), theirs)
        err = torch_logits(m, lorafit_logits(lorafit, theirs, os.path.join(d, "l.safetensors")))
        print(f"[bnb4] lorafit loads transformers' 4-bit folder: max |logits torch - lorafit| = "
              f"{err:.3g} (tol {TOL:g})")
        assert err <= TOL, f"transformers' folder: logits differ by {err}"
        same = 0
        with safe_open(os.path.join(theirs, "model.safetensors"), "pt") as a, \
                safe_open(os.path.join(d, "ours_nf4-dq", "model.safetensors"), "pt") as b:
            for k in a.keys():
                if k.endswith("_proj.weight") and "layers." in k:
                    assert torch.equal(a.get_tensor(k).flatten(), b.get_tensor(k).flatten()), k
                    assert torch.equal(a.get_tensor(k + ".absmax"), b.get_tensor(k + ".absmax")), k
                    same += 1
        assert same > 0
        print(f"[bnb4] {same} packed weights (and absmax codes) of transformers' folder equal ours")
        # 3. a PEFT QLoRA adapter on that base
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                         task_type="CAUSAL_LM")
        pm = get_peft_model(m, cfg)
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-3)
        pm.train()
        g = torch.Generator().manual_seed(0)
        for _ in range(4):
            x = torch.randint(0, 49152, (2, 16), generator=g)
            loss = pm(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        pm.eval()
        ad = os.path.join(d, "qlora")
        pm.save_pretrained(ad)
        err = torch_logits(pm, lorafit_logits(lorafit, theirs, os.path.join(d, "l.safetensors"), ad))
        print(f"[bnb4] a PEFT QLoRA adapter on the NF4 base: max |logits PEFT - lorafit| = "
              f"{err:.3g} (tol {TOL:g})")
        assert err <= TOL, f"QLoRA adapter: logits differ by {err}"
    print("[bnb4] all checks passed")


if __name__ == "__main__":
    main()
