#!/usr/bin/env python3
"""Checks that Hugging Face PEFT loads adapters written by lorafit, unchanged.

  tools/.venv/bin/python tools/check_peft_load.py [BUILD_DIR]     (default build-peft)

Runs `<BUILD_DIR>/test_peft --gtest_filter=PeftExport.*` with LORAFIT_PEFT_EXPORT=<tmp>, which
makes adapters with lorafit (random A and B, so the adapter changes the output) on the tiny BERT,
tiny Llama and MiniLM bases (LoRA, and DoRA with lora_magnitude_vector from
PeftExport.DoraForPythonCheck in tests/peft/dora_test.cpp), saves them with PeftModel::save_pretrained and writes lorafit's
logits on a fixed batch. For each adapter this script then
  1. loads it with PeftModel.from_pretrained (transformers + peft from PyPI),
  2. asserts that every tensor in adapter_model.safetensors was loaded (set_peft_model_state_dict
     reports no unexpected keys, and get_peft_model_state_dict gives back exactly the file's keys
     and values) and that no adapter weight is missing (AdaLoRA folders pruned by rank_pattern:
     the keys are checked on a fresh get_peft_model + set_peft_model_state_dict, the path
     from_pretrained takes),
  3. asserts PEFT's logits equal lorafit's (max abs error <= 1e-5 tiny, 1e-4 MiniLM).
Exit status 0 only when every check passes.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check(case, d):
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    ours = load_file(os.path.join(d, case + "_ours.safetensors"))
    from safetensors import safe_open
    with safe_open(os.path.join(d, case + "_ours.safetensors"), "pt") as f:
        meta = f.metadata()
    base = os.path.join(ROOT, meta["base"])
    adir = os.path.join(d, case)
    cfg = json.load(open(os.path.join(adir, "adapter_config.json")))
    if cfg.get("task_type") == "SEQ_CLS":
        m = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=ours["logits"].shape[1], attn_implementation="eager")
    else:
        m = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager")
    m = m.float().eval()
    pm = PeftModel.from_pretrained(m, adir).eval()
    saved = load_file(os.path.join(adir, "adapter_model.safetensors"))
    if cfg.get("peft_type") == "ADALORA":
        # A second set_peft_model_state_dict would resize the already pruned AdaLoRA modules by
        # rank_pattern again (PEFT fails there); check the keys on the from_pretrained path
        # instead: a fresh get_peft_model at init_r, then the one load that resizes.
        from peft import PeftConfig, get_peft_model
        m2 = type(m).from_pretrained(base, attn_implementation="eager",
                                     **({"num_labels": m.config.num_labels}
                                        if cfg.get("task_type") == "SEQ_CLS" else {}))
        check_pm = get_peft_model(m2.float().eval(), PeftConfig.from_pretrained(adir))
        res = set_peft_model_state_dict(check_pm, saved)
    else:
        res = set_peft_model_state_dict(pm, saved)
    unexpected = list(res.unexpected_keys)
    missing = [k for k in res.missing_keys if "lora_" in k or "modules_to_save" in k]
    back = get_peft_model_state_dict(pm)
    assert not unexpected, f"{case}: unexpected keys {unexpected}"
    assert not missing, f"{case}: missing adapter keys {missing}"
    assert set(back) == set(saved), f"{case}: PEFT state {sorted(set(back) ^ set(saved))}"
    for k, v in saved.items():
        assert torch.equal(back[k], v), f"{case}: {k} differs after loading"
    kw = {"input_ids": ours["input_ids"].long(), "attention_mask": ours["attention_mask"].long()}
    if "token_type_ids" in ours:
        kw["token_type_ids"] = ours["token_type_ids"].long()
    with torch.no_grad():
        logits = pm(**kw).logits
    err = (logits - ours["logits"]).abs().max().item()
    tol = 1e-4 if "minilm" in case else 1e-5
    print(f"{case}: {len(saved)} tensors loaded, no missing/unexpected keys; "
          f"max |logits PEFT - lorafit| = {err:.3g} (tol {tol:g}); lorafit: {meta['count']}")
    assert err <= tol, f"{case}: logits differ by {err}"


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build-peft")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, LORAFIT_PEFT_EXPORT=d)
        subprocess.run([os.path.join(build, "test_peft"), "--gtest_filter=PeftExport.*"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        cases = sorted(f[:-len("_ours.safetensors")] for f in os.listdir(d)
                       if f.endswith("_ours.safetensors"))
        if not cases:
            sys.exit("check_peft_load: test_peft exported nothing")
        for c in cases:
            check(c, d)
    print(f"check_peft_load: OK ({len(cases)} adapters)")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
