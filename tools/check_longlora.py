#!/usr/bin/env python3
"""Checks a LongLoRA adapter trained by `lorafit train --rope-scaling ... --trainable-extra
embed,norm` against transformers + PEFT:

  python tools/check_longlora.py --model HF_FOLDER --adapter RUN/final --text FILE \
      [--tokens 2048] [--lorafit build/lorafit] [--merged MERGED_FOLDER]

1. the base loads in transformers with the run's RoPE scaling (lorafit_task.json "rope":
   rope_parameters = the recorded rope_scaling + the base's rope_theta, max_position_embeddings);
2. `PeftModel.from_pretrained` loads the adapter: no unexpected keys, get_peft_model_state_dict
   gives back exactly the file (LoRA and the modules_to_save embeddings / norms);
3. `lorafit logits --out` on the first --tokens tokens of the text (the same ids go to PEFT):
   max |logits| difference and the mean next-token loss of both, which must agree to 1e-3
   relative;
4. with --merged (from `lorafit adapter merge`): transformers loads the merged folder from its
   config.json alone (the scaling written there) and gives the same loss.
Exit status 0 only when every check passes.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--lorafit", default="build/lorafit")
    ap.add_argument("--merged", default=None)
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()

    import torch
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with open(os.path.join(a.adapter, "lorafit_task.json")) as f:
        note = json.load(f).get("rope")
    cfg = AutoConfig.from_pretrained(a.model)
    if note:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta",
                                                                  getattr(cfg, "rope_theta", 10000.0))
        cfg.rope_parameters = {**note["rope_scaling"], "rope_theta": theta}
        cfg.max_position_embeddings = note["max_position_embeddings"]
    cfg._attn_implementation = "eager"

    tok = AutoTokenizer.from_pretrained(a.model)
    with open(a.text) as f:
        text = f.read()
    ids = tok(text, add_special_tokens=False)["input_ids"][: a.tokens]
    prompt = tok.decode(ids)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        subprocess.run([a.lorafit, "logits", "--model", a.model, "--adapter", a.adapter, "--prompt",
                        prompt, "--no-special", "--out", out], check=True, stdout=subprocess.DEVNULL)
        got = load_file(out)
    ours_ids = got["ids.0"].long()
    ours = got["logits.0"].double()

    base = AutoModelForCausalLM.from_pretrained(a.model, config=cfg, torch_dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, a.adapter)
    pm.eval()
    file_sd = load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    res = set_peft_model_state_dict(pm, file_sd)
    assert not res.unexpected_keys, f"unexpected keys: {res.unexpected_keys[:5]}"
    back = get_peft_model_state_dict(pm)
    assert set(back) == set(file_sd), f"keys differ: {sorted(set(back) ^ set(file_sd))[:5]}"
    for k, v in file_sd.items():
        assert torch.equal(back[k].to(v.dtype), v), f"{k}: PEFT holds different values"
    extra = [k for k in file_sd if "lora_" not in k]

    def loss_of(logits, x):
        return torch.nn.functional.cross_entropy(logits[:-1], x[1:]).item()

    with torch.no_grad():
        theirs = pm(ours_ids[None]).logits[0].double()
    err = (theirs - ours).abs().max().item()
    l_peft, l_ours = loss_of(theirs, ours_ids), loss_of(ours, ours_ids)
    ok = abs(l_peft - l_ours) <= a.tol * abs(l_peft) and err < 1e-2
    print(f"{a.adapter}: PEFT loads {len(file_sd)} tensors ({len(extra)} modules_to_save: "
          f"{', '.join(sorted(set(k.split('.')[-2] for k in extra)))}); rope {note and note['rope_scaling']}; "
          f"{len(ours_ids)} tokens: loss PEFT {l_peft:.5f} lorafit {l_ours:.5f}, max |logits diff| {err:.2e}")
    if a.merged:
        merged = AutoModelForCausalLM.from_pretrained(a.merged, torch_dtype=torch.float32,
                                                      attn_implementation="eager")
        with torch.no_grad():
            lm = loss_of(merged(ours_ids[None]).logits[0].double(), ours_ids)
        print(f"{a.merged}: transformers from its config.json "
              f"(rope {getattr(merged.config, 'rope_parameters', None)}): loss {lm:.5f}")
        ok = ok and abs(lm - l_ours) <= a.tol * abs(l_ours)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
