"""RoPE scaling fixtures: transformers' rotary embedding and a tiny Llama with rope_parameters.

  tools/make_reference.sh rope      (or: python tools/make_reference.py rope)

tests/fixtures/rope/rotary.json: for each case (default, linear, dynamic below and beyond the
original length, llama3, yarn with default and explicit parameters, yarn with mscale) the
LlamaConfig rope fields as transformers writes them (config.to_dict()), the head size, the
positions, the inverse frequencies and attention_scaling of its RoPE init function, and cos/sin of
LlamaRotaryEmbedding.forward at those positions (first D/2 columns; the rest repeat them).

tests/fixtures/rope/tiny_llama_rope.safetensors (+ tiny_llama_rope.json, the configs): logits of
tests/fixtures/models/tiny_llama (max_position_embeddings 64) on 100 tokens, with its config's
rope_parameters set to each scaling, as LlamaForCausalLM computes them (fp32, eager attention).
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

ROTARY = [
    # name, rope_type, parameters, theta, max_position_embeddings, positions
    ("default", "default", {}, 10000.0, 1024, None),
    ("linear", "linear", {"factor": 2.0}, 10000.0, 2048, None),
    ("dynamic_short", "dynamic", {"factor": 2.0}, 10000.0, 1024, [0, 1, 5, 100, 700, 1000]),
    ("dynamic_long", "dynamic", {"factor": 2.0}, 10000.0, 1024, None),
    ("llama3", "llama3", {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 512}, 500000.0, 4096, None),
    ("yarn", "yarn", {"factor": 4.0, "original_max_position_embeddings": 1024}, 10000.0, 4096,
     None),
    # the factor as given, whatever the two lengths (transformers >= 5 derives it only when absent)
    ("yarn_factor_from_lengths", "yarn", {"factor": 4.0, "original_max_position_embeddings": 1024},
     10000.0, 2048, None),
    ("yarn_no_original", "yarn", {"factor": 2.0}, 10000.0, 1024, None),
    ("yarn_betas", "yarn", {"factor": 3.0, "beta_fast": 16.0, "beta_slow": 2.0,
                            "original_max_position_embeddings": 1024}, 1e6, 3072, None),
    ("yarn_mscale", "yarn", {"factor": 4.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                             "original_max_position_embeddings": 1024}, 10000.0, 4096, None),
    ("yarn_attention_factor", "yarn", {"factor": 2.0, "attention_factor": 1.3,
                                       "original_max_position_embeddings": 1024}, 10000.0, 2048,
     None),
]
POSITIONS = [0, 1, 2, 3, 7, 100, 511, 1023, 1024, 2000, 3000, 4095]
HEAD_DIM = 64

MODEL = [
    ("linear", {"rope_type": "linear", "factor": 2.0}),
    ("dynamic", {"rope_type": "dynamic", "factor": 2.0}),
    ("llama3", {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    ("yarn", {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}),
]
# the context each scaled model declares (as --rope-scaling TYPE:2 writes it; dynamic keeps 64)
MODEL_MAX_POS = {"linear": 128, "dynamic": 64, "llama3": 256, "yarn": 128}


def rope_fields(cfg):
    d = cfg.to_dict()
    return {k: d[k] for k in ("rope_parameters", "rope_scaling", "rope_theta",
                              "max_position_embeddings") if k in d and d[k] is not None}


def rotary(out):
    cases = []
    for name, rtype, params, theta, max_pos, positions in ROTARY:
        rp = {"rope_type": rtype, "rope_theta": theta, **params}
        cfg = LlamaConfig(hidden_size=HEAD_DIM * 2, num_attention_heads=2, head_dim=HEAD_DIM,
                          max_position_embeddings=max_pos, rope_parameters=rp)
        rot = LlamaRotaryEmbedding(cfg)  # fresh: dynamic keeps state between calls
        pos = positions or POSITIONS
        x = torch.zeros(1, len(pos), HEAD_DIM)
        with torch.no_grad():
            cos, sin = rot(x, torch.tensor([pos]))
        cases.append({
            "name": name, "config": rope_fields(cfg), "head_dim": HEAD_DIM, "positions": pos,
            "inv_freq": rot.inv_freq.double().tolist(),
            "attention_scaling": float(rot.attention_scaling),
            "cos": cos[0, :, :HEAD_DIM // 2].double().tolist(),
            "sin": sin[0, :, :HEAD_DIM // 2].double().tolist(),
        })
        assert torch.equal(cos[0, :, :HEAD_DIM // 2], cos[0, :, HEAD_DIM // 2:])
    with open(os.path.join(out, "rotary.json"), "w") as f:
        json.dump({"transformers": __import__("transformers").__version__, "cases": cases}, f)


def tiny_model(out, fixtures):
    src = os.path.join(fixtures, "models", "tiny_llama")
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(0, 100, (1, 100), generator=g)
    tensors = {"ids": ids.to(torch.int32)}
    configs = {}
    for name, rp in MODEL:
        cfg = LlamaConfig.from_pretrained(src)
        cfg.rope_parameters = {**rp, "rope_theta": cfg.rope_parameters["rope_theta"]}
        cfg.max_position_embeddings = MODEL_MAX_POS[name]
        cfg._attn_implementation = "eager"
        model = LlamaForCausalLM.from_pretrained(src, config=cfg, torch_dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            tensors["logits_" + name] = model(ids).logits[0].contiguous()
        configs[name] = rope_fields(model.config)
    save_file(tensors, os.path.join(out, "tiny_llama_rope.safetensors"))
    with open(os.path.join(out, "tiny_llama_rope.json"), "w") as f:
        json.dump(configs, f, indent=1)


def main(fixtures, models):
    out = os.path.join(fixtures, "rope")
    os.makedirs(out, exist_ok=True)
    rotary(out)
    tiny_model(out, fixtures)


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    main(os.path.join(root, "tests", "fixtures"), os.path.join(root, "models"))
