"""Reference fixtures for combining adapters and PiSSA / OLoRA init (tests/peft/combine_test.cpp),
made with Hugging Face PEFT 0.21.2 on the tiny Llama (tests/fixtures/models/tiny_llama), fp32.

tests/fixtures/peft_combine/
  one/ two/ three/          PEFT adapter folders (random A and B):
                         one:   r 4, alpha 8, [q_proj, v_proj]
                         two:   r 2, alpha 3, [q_proj, o_proj]
                         three: r 4, alpha 2, [q_proj, v_proj]
  combine_ref.safetensors
    cat.<key>          add_weighted_adapter(["one", "two"], [0.7, -0.4], "cat", "cat"): its tensors
    linear.<key>       add_weighted_adapter(["one", "three"], [0.6, 0.5], "lin", "linear")
    svd.<module>       PEFT's "svd" of ["one", "two"], [0.7, -0.4], svd_rank 6: s·B A per module
    full.<module>      Σ wᵢ·sᵢ·BᵢAᵢ of ["one", "two"] (float64 numpy, stored f32)
    best2.<module>     numpy's best rank-2 approximation of full.<module> (truncated SVD)
    sv.<module>        singular values of full.<module>
  init_ref.safetensors (PiSSA and OLoRA on [q_proj, v_proj, down_proj], r 4, alpha 8)
    <init>.res.<module>    the residual base weight PEFT leaves (W − s·B A)
    <init>.ba.<module>     s·B A
    <init>.A.<module>, <init>.B.<module>  (signs of singular vectors may differ from LAPACK's)
Module names are HF module paths ("model.layers.0.self_attn.q_proj").
"""
import os
import shutil

import numpy as np
import torch
from safetensors.torch import save_file

BASE_REL = "tests/fixtures/models/tiny_llama"


def _randomize(pm, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if (".lora_A." + name + "." in n) or (".lora_B." + name + "." in n):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _lora_modules(pm, name):
    out = {}
    for mn, m in pm.base_model.model.named_modules():
        if hasattr(m, "lora_A") and name in m.lora_A:
            out[mn] = m
    return out


def main(fixtures_dir, models_dir):
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    out = os.path.join(fixtures_dir, "peft_combine")
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model_dir = os.path.join(fixtures_dir, "models", "tiny_llama")
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").float().eval()
    cfgs = {
        "one": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        "two": LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "o_proj"], task_type="CAUSAL_LM"),
        "three": LoraConfig(r=4, lora_alpha=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    }
    pm = get_peft_model(m, cfgs["one"], adapter_name="one")
    pm.add_adapter("two", cfgs["two"])
    pm.add_adapter("three", cfgs["three"])
    for i, n in enumerate(["one", "two", "three"]):
        _randomize(pm, n, 100 + i)
    import json
    tmp = os.path.join(out, "tmp")
    pm.save_pretrained(tmp)  # non-default names land in tmp/<name>/
    for n in ["one", "two", "three"]:
        shutil.move(os.path.join(tmp, n), os.path.join(out, n))
        p = os.path.join(out, n, "adapter_config.json")
        with open(p) as f:
            c = json.load(f)
        c["base_model_name_or_path"] = BASE_REL
        with open(p, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
    shutil.rmtree(tmp)

    t = {}
    pm.add_weighted_adapter(["one", "two"], [0.7, -0.4], "cat", combination_type="cat")
    for k, v in get_peft_model_state_dict(pm, adapter_name="cat").items():
        t["cat." + k] = v.detach().clone().contiguous()
    pm.add_weighted_adapter(["one", "three"], [0.6, 0.5], "lin", combination_type="linear")
    for k, v in get_peft_model_state_dict(pm, adapter_name="lin").items():
        t["linear." + k] = v.detach().clone().contiguous()
    pm.add_weighted_adapter(["one", "two"], [0.7, -0.4], "svd", combination_type="svd", svd_rank=6)
    for mn, mod in _lora_modules(pm, "svd").items():
        t["svd." + mn] = mod.get_delta_weight("svd").detach().clone().contiguous()
        full = np.zeros(mod.weight.shape, dtype=np.float64)
        for n, w in [("one", 0.7), ("two", -0.4)]:
            if n in mod.lora_A:
                full += w * mod.get_delta_weight(n).detach().double().numpy()
        U, S, Vt = np.linalg.svd(full, full_matrices=False)
        t["full." + mn] = torch.from_numpy(full).float()
        t["best2." + mn] = torch.from_numpy((U[:, :2] * S[:2]) @ Vt[:2]).float()
        t["sv." + mn] = torch.from_numpy(S).float()
    save_file(t, os.path.join(out, "combine_ref.safetensors"))
    print(f"  combine: {len(t)} tensors")

    ti = {}
    for init in ["pissa", "olora"]:
        m = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").float().eval()
        lc = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=init, task_type="CAUSAL_LM")
        pm = get_peft_model(m, lc)
        for mn, mod in _lora_modules(pm, "default").items():
            ti[f"{init}.res.{mn}"] = mod.base_layer.weight.detach().clone().contiguous()
            ti[f"{init}.ba.{mn}"] = mod.get_delta_weight("default").detach().clone().contiguous()
            ti[f"{init}.A.{mn}"] = mod.lora_A["default"].weight.detach().clone().contiguous()
            ti[f"{init}.B.{mn}"] = mod.lora_B["default"].weight.detach().clone().contiguous()
    save_file(ti, os.path.join(out, "init_ref.safetensors"))
    print(f"  init: {len(ti)} tensors")
