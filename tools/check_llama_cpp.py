#!/usr/bin/env python3
"""Does llama.cpp load our llama.cpp LoRA GGUF and apply it as lorafit does?

  PY=/tmp/llamacpp/bin/python   # a venv with llama-cpp-python, numpy and gguf
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
Steps 3-5 run twice: on the Q4_1 GGUF as shipped, and on an F32 copy of it (every tensor
dequantized with the gguf package), where llama.cpp also multiplies in fp32; there
llama.cpp also loads our merged GGUF (`lorafit adapter merge --type f32`) and its logits are
compared. The llama.cpp venv needs llama-cpp-python, numpy and gguf.
llama.cpp runs with an F32 KV cache (type_k = type_v = 0). Exit status 0 when, on the F32 copy,
the adapter's effect agrees within 1e-3 relative to its largest value and llama.cpp's logits on
our merged GGUF match ours within 1e-3.
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


def make_adapter(d, gguf_path, meta, r=8, alpha=16, seed=0, modules=None):
    kv = lambda k: int(meta[k])  # llama-cpp-python's Llama.metadata: GGUF keys as strings
    n_layer, hidden = kv("llama.block_count"), kv("llama.embedding_length")
    n_head, n_kv = kv("llama.attention.head_count"), kv("llama.attention.head_count_kv")
    ffn = kv("llama.feed_forward_length")
    hd = hidden // n_head
    shapes = {"self_attn.q_proj": (n_head * hd, hidden), "self_attn.k_proj": (n_kv * hd, hidden),
              "self_attn.v_proj": (n_kv * hd, hidden), "self_attn.o_proj": (hidden, n_head * hd),
              "mlp.up_proj": (ffn, hidden), "mlp.gate_proj": (ffn, hidden),
              "mlp.down_proj": (hidden, ffn)}
    modules = modules or ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]
    shapes = {k: v for k, v in shapes.items() if k.split(".")[1] in modules}
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
           "target_modules": modules,
           "init_lora_weights": True, "inference_mode": True}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def f32_copy(src, dst):
    """The GGUF with every tensor dequantized to F32 (metadata copied), with the gguf package."""
    import gguf
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, x.reshape([int(n) for n in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def compare(name, ids, ours_base, ours_lora, cpp_base, cpp_lora):
    rel = lambda x, y: float(np.abs(x - y).max() / np.abs(y).max())
    eff_ours, eff_cpp = ours_lora - ours_base, cpp_lora - cpp_base
    bb = float(np.abs(cpp_base - ours_base).max())
    print(f"[{name}]")
    print(f"  base    vs base    : max |diff| {bb:.2e} (logit scale {np.abs(ours_base).max():.2f})")
    print(f"  adapted vs adapted : max |diff| {np.abs(cpp_lora - ours_lora).max():.2e}")
    print(f"  adapter effect     : ours max {np.abs(eff_ours).max():.4f}, llama.cpp max "
          f"{np.abs(eff_cpp).max():.4f}, max |diff| {np.abs(eff_cpp - eff_ours).max():.2e} "
          f"(relative {rel(eff_cpp, eff_ours):.2e}, correlation "
          f"{float(np.corrcoef(eff_ours.ravel(), eff_cpp.ravel())[0, 1]):.5f})")
    same = ours_lora.argmax(1) == cpp_lora.argmax(1)
    print(f"  next-token argmax (adapted): same at {int(same.sum())}/{len(ids)} positions")
    return rel(eff_cpp, eff_ours), bb


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

    def cpp(model_path, lora_path, ids):
        # F32 KV cache (llama.cpp defaults to F16), so only the weights' storage differs.
        kw = dict(model_path=model_path, logits_all=True, n_ctx=256, n_threads=2, verbose=False, seed=0,
                  type_k=0, type_v=0)
        if lora_path:
            kw["lora_path"] = lora_path
        llm = Llama(**kw)
        if ids:
            llm.eval(ids)
        return llm, np.array(llm.scores[: len(ids)], dtype=np.float32)

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        run = lambda *c: subprocess.run([a.lorafit, *c], check=True, capture_output=True, text=True)
        T = lambda n: os.path.join(tmp, n)
        meta = cpp(model, None, [])[0].metadata
        # An F32 copy of the base: llama.cpp then multiplies in fp32 too (with the Q4_1 file it
        # rounds activations to 8 bits for every Q4_1/Q8_0 product), so the engines agree closely
        # and the adapter comparison is not drowned by quantization noise.
        f32_copy(model, T("base_f32.gguf"))
        make_adapter(T("adapter"), model, meta)
        run("adapter", "export-gguf", T("adapter"), "--base", model, "--out", T("lora.gguf"))
        run("adapter", "merge", T("adapter"), "--base", T("base_f32.gguf"), "--out", T("merged_f32.gguf"),
            "--type", "f32")
        for name, base in [("Q4_1 base (as shipped)", model), ("F32 copy of the base", T("base_f32.gguf"))]:
            run("logits", "--model", base, "--prompt", a.prompt, "--out", T("b.st"))
            run("logits", "--model", base, "--adapter", T("adapter"), "--prompt", a.prompt, "--out", T("l.st"))
            ob, ol = read_safetensors(T("b.st")), read_safetensors(T("l.st"))
            ids = [int(x) for x in ob["ids.0"]]
            cpp_base, cpp_lora = cpp(base, None, ids)[1], cpp(base, T("lora.gguf"), ids)[1]
            r, bb = compare(name, ids, ob["logits.0"], ol["logits.0"], cpp_base, cpp_lora)
            if base != model:
                ok = ok and r < 1e-3
                cpp_merged = cpp(T("merged_f32.gguf"), None, ids)[1]
                print(f"  llama.cpp on our merged GGUF (f32) vs llama.cpp base + LoRA GGUF: max |diff| "
                      f"{np.abs(cpp_merged - cpp_lora).max():.2e}; vs ours base + adapter: "
                      f"{np.abs(cpp_merged - ol['logits.0']).max():.2e}")
                ok = ok and float(np.abs(cpp_merged - ol["logits.0"]).max()) < 1e-3
    print(f"prompt: {a.prompt!r} ({len(ids)} tokens)")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
