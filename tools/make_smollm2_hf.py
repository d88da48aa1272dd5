#!/usr/bin/env python3
"""An F32 Hugging Face folder of SmolLM2-135M-Instruct made from the GGUF lorafit uses, so that
PyTorch + PEFT and lorafit train the very same weights (bench/side_by_side.sh). transformers
dequantizes the GGUF (gguf package) and save_pretrained writes config.json, model.safetensors and
the tokenizer files.

  python tools/make_smollm2_hf.py [--gguf models/SmolLM2-135M-Instruct/X.gguf] [--out DIR]
"""
import argparse
import glob
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--out", default="runs/smollm2-f32")
    a = ap.parse_args()
    gguf = a.gguf or next(iter(sorted(glob.glob("models/SmolLM2-135M-Instruct/*.gguf"))), None)
    if not gguf or not os.path.exists(gguf):
        sys.exit("make_smollm2_hf: no SmolLM2 GGUF (run tools/fetch_models.sh or pass --gguf)")
    if os.path.exists(os.path.join(a.out, "model.safetensors")):
        print(a.out)
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    # A model loaded from a GGUF is marked as quantized and refuses save_pretrained: copy its
    # (already dequantized, fp32) weights into a plain model of the same config.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = a.out + ".tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, a.out)
    print(a.out)


if __name__ == "__main__":
    main()
