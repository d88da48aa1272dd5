#!/usr/bin/env python3
"""Does llama.cpp load our llama.cpp LoRA GGUF and apply it as lorafit does?

  PY=/tmp/llamacpp/bin/python   # a venv with llama-cpp-python and numpy (+ safetensors)
  $PY tools/check_llama_cpp.py [--lorafit build/lorafit] [--model models/SmolLM2-135M-Instruct/...gguf]

Steps (all files in a temporary folder):
  1. writes a PEFT adapter folder for the model with random, nonzero A and B (r 8, alpha 16) on
     q_proj, k_proj, v_proj, o_proj, up_proj of every layer (q/k exercise the GGUF row permutation),
  2. `lorafit adapter export-gguf` turns it into a llama.cpp LoRA GGUF,
  3. `lorafit logits` gives lorafit's logits for a short prompt, without and with the adapter
     (the token ids are taken from lorafit's dump, so both sides see the same tokens),
  4. llama.cpp (llama-cpp-python, logits_all=True) gives its logits for the same ids, without
     and with the LoRA GGUF,
  5. prints max |difference| base vs base (how far the two engines are apart anyway: llama.cpp
     multiplies Q4_1 weights with 8-bit-quantized activations, lorafit in fp32), adapted vs
     adapted, and the adapter's effect (adapted − base) on both sides, relative to its size.
Exit status 0 when the adapter's effect agrees (relative error < 0.1 and the same next-token
argmax at every position where lorafit's top-2 margin exceeds the base-vs-base error).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_safetensors(path):
    """Minimal reader (F32/I32 only), so the llama.cpp venv needs no torch."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": np.float32, "I32": np.int32}[v["dtype"]]
        out[k] = np.frombuffer(data[a:b], dtype=dt).reshape(v["shape"])
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for k, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def make_adapter(d, gguf_path, meta, r=8, alpha=16, seed=0):
    kv = lambda k: int(meta[k])  # llama-cpp-python's Llama.metadata: GGUF keys as strings
    n_layer, hidden = kv("llama.block_count"), kv("llama.embedding_length")
    n_head, n_kv = kv("llama.attention.head_count"), kv("llama.attention.head_count_kv")
    ffn = kv("llama.feed_forward_length")
    hd = hidden // n_head
    shapes = {"self_attn.q_proj": (n_head * hd, hidden), "self_attn.k_proj": (n_kv * hd, hidden),
              "self_attn.v_proj": (n_kv * hd, hidden), "self_attn.o_proj": (hidden, n_head * hd),
              "mlp.up_proj": (ffn, hidden)}
    rng = np.random.default_rng(seed)
    t = {}
    for i in range(n_layer):
        for m, (out, inp) in shapes.items():
            k = f"base_model.model.model.layers.{i}.{m}"
            t[k + ".lora_A.weight"] = rng.uniform(-1, 1, (r, inp)) / np.sqrt(inp)
            t[k + ".lora_B.weight"] = rng.uniform(-1, 1, (out, r)) * 0.05
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), t)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
           "lora_dropout": 0.0, "bias": "none", "base_model_name_or_path": gguf_path,
           "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
           "init_lora_weights": True, "inference_mode": True}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lorafit", default=os.path.join(ROOT, "build", "lorafit"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog because")
    a = ap.parse_args()
    model = a.model or glob.glob(os.path.join(ROOT, "models", "SmolLM2-135M-Instruct", "*.gguf"))[0]
    from llama_cpp import Llama
    import llama_cpp
    print(f"llama-cpp-python {llama_cpp.__version__}; model {os.path.relpath(model, ROOT)}")
    def cpp(lora_path, ids):
        kw = dict(model_path=model, logits_all=True, n_ctx=256, n_threads=2, verbose=False, seed=0)
        if lora_path:
            kw["lora_path"] = lora_path
        llm = Llama(**kw)
        if ids:
            llm.eval(ids)
        return llm, np.array(llm.scores[: len(ids)], dtype=np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        ad, lora = os.path.join(tmp, "adapter"), os.path.join(tmp, "lora.gguf")
        meta = cpp(None, [])[0].metadata
        make_adapter(ad, model, meta)
        run = lambda *c: subprocess.run([a.lorafit, *c], check=True, capture_output=True, text=True)
        run("adapter", "export-gguf", ad, "--base", model, "--out", lora)
        run("logits", "--model", model, "--prompt", a.prompt, "--out", os.path.join(tmp, "base.st"))
        run("logits", "--model", model, "--adapter", ad, "--prompt", a.prompt,
            "--out", os.path.join(tmp, "lora.st"))
        ob, ol = read_safetensors(os.path.join(tmp, "base.st")), read_safetensors(os.path.join(tmp, "lora.st"))
        ids = [int(x) for x in ob["ids.0"]]
        ours_base, ours_lora = ob["logits.0"], ol["logits.0"]
        cpp_base, cpp_lora = cpp(None, ids)[1], cpp(lora, ids)[1]
    rel = lambda x, y: float(np.abs(x - y).max() / np.abs(y).max())
    eff_ours, eff_cpp = ours_lora - ours_base, cpp_lora - cpp_base
    bb = float(np.abs(cpp_base - ours_base).max())
    print(f"prompt: {a.prompt!r} ({len(ids)} tokens)")
    print(f"base    vs base    : max |diff| {bb:.4f} (logit scale {np.abs(ours_base).max():.2f})")
    print(f"adapted vs adapted : max |diff| {np.abs(cpp_lora - ours_lora).max():.4f}")
    print(f"adapter effect     : ours max {np.abs(eff_ours).max():.4f}, llama.cpp max "
          f"{np.abs(eff_cpp).max():.4f}, max |diff| {np.abs(eff_cpp - eff_ours).max():.4f} "
          f"(relative {rel(eff_cpp, eff_ours):.4f})")
    corr = float(np.corrcoef(eff_ours.ravel(), eff_cpp.ravel())[0, 1])
    print(f"adapter effect correlation: {corr:.5f}")
    top2 = np.sort(ours_lora, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * bb
    same = (ours_lora.argmax(1) == cpp_lora.argmax(1))
    print(f"next-token argmax (adapted): same at {int(same.sum())}/{len(ids)} positions "
          f"({int(same[clear].sum())}/{int(clear.sum())} where the margin exceeds 2x base error)")
    ok = rel(eff_cpp, eff_ours) < 0.1 and bool(same[clear].all())
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
