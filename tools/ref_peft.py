"""Reference fixtures for the peft/ layer (tests/peft/), made with Hugging Face PEFT (peft 0.21.2).

Writes tests/fixtures/peft/<case>/ (a PEFT adapter folder exactly as save_pretrained writes it:
adapter_config.json + adapter_model.safetensors) and tests/fixtures/peft/<case>_ref.safetensors
with the inputs and PEFT's outputs on a fixed batch:
  input_ids, attention_mask (+ token_type_ids, labels for seq-cls)
  logits          eval mode (no dropout), adapter active
  base_logits     the same with the adapter disabled (the base model alone)
  loss            cross-entropy (seq-cls, mean over the batch) or causal-LM loss (mean over the
                  shifted targets, labels = input_ids) as a [1] tensor
  grad.<key>      the gradient of that loss w.r.t. every adapter tensor <key> of
                  adapter_model.safetensors (lora_A/lora_B and modules_to_save weights)
and metadata: trainable / all (print_trainable_parameters' counts), base (the base model folder,
relative to the repository), case description.

Cases (B is drawn nonzero so the adapter changes the output):
  bert_qv          tiny BERT seq-cls, target_modules [query, value], r 4, alpha 8 (SEQ_CLS adds the
                   classifier to modules_to_save)
  bert_all_rslora  tiny BERT, "all-linear", r 4, alpha 16, use_rslora, rank_pattern/alpha_pattern
  llama_qv         tiny Llama causal LM, [q_proj, v_proj], r 4, alpha 8
  llama_all_rslora tiny Llama, "all-linear", r 2, alpha 4, use_rslora, rank_pattern down_proj 3
  llama_layers     tiny Llama, [q_proj, k_proj, o_proj, up_proj] in layer 1 only
                   (layers_to_transform [1], layers_pattern "layers"), r 3, alpha 6, dropout 0.1
  minilm_qv        all-MiniLM-L6-v2 as BertForSequenceClassification (2 labels), [query, value],
                   r 4, alpha 8, modules_to_save [classifier] (the head is random: it is saved)
All runs are fp32, eager attention, eval mode.
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file, load_file


def _randomize(pm, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _grads(pm, loss):
    pm.zero_grad()
    loss.backward()
    out = {}
    # Map live parameter names to the saved keys (PEFT's get_peft_model_state_dict naming).
    for n, p in pm.named_parameters():
        if p.grad is None:
            continue
        k = n.replace(".default", "").replace(".modules_to_save", "")
        out["grad." + k] = p.grad.detach().clone().contiguous()
    return out


def _save_case(fixtures, name, pm, base_rel, tensors, description):
    d = os.path.join(fixtures, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    pm.save_pretrained(d)
    # Record base_model_name_or_path relative to the repository (machine-independent).
    cfg_path = os.path.join(d, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = base_rel
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    saved = load_file(os.path.join(d, "adapter_model.safetensors"))
    for k in [k for k in tensors if k.startswith("grad.")]:
        if k[5:] not in saved:
            raise SystemExit(f"ref_peft {name}: gradient {k} has no saved tensor")
    trainable, total = pm.get_nb_trainable_parameters()
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(fixtures, name + "_ref.safetensors"),
              metadata={"trainable": str(trainable), "all": str(total), "base": base_rel,
                        "case": description})
    print(f"  {name}: {len(saved)} adapter tensors, trainable {trainable:,} / {total:,}")


def _bert_case(fixtures, models_root, name, model_dir, base_rel, lcfg, seed, num_labels=None):
    from transformers import AutoModelForSequenceClassification
    from peft import get_peft_model
    torch.manual_seed(seed)
    kw = {"attn_implementation": "eager"}
    if num_labels:
        kw["num_labels"] = num_labels
    m = AutoModelForSequenceClassification.from_pretrained(model_dir, **kw).float().eval()
    pm = get_peft_model(m, lcfg)
    _randomize(pm, seed)
    pm.eval()
    g = torch.Generator().manual_seed(seed + 1)
    vocab = m.config.vocab_size
    B, T = 3, 7
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    tt = torch.zeros(B, T, dtype=torch.long)
    tt[0, 4:] = 1
    labels = torch.randint(0, m.config.num_labels, (B,), generator=g)
    out = pm(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    loss = torch.nn.functional.cross_entropy(out.logits, labels)
    t = {"input_ids": ids.int(), "attention_mask": mask.int(), "token_type_ids": tt.int(),
         "labels": labels.int(), "logits": out.logits.detach(), "loss": loss.detach().reshape(1)}
    t.update(_grads(pm, loss))
    with torch.no_grad(), pm.disable_adapter():
        t["base_logits"] = pm(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
    _save_case(fixtures, name, pm, base_rel, t, json.dumps(lcfg.to_dict(), default=str)[:2000])


def _llama_case(fixtures, name, model_dir, base_rel, lcfg, seed):
    from transformers import AutoModelForCausalLM
    from peft import get_peft_model
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").float().eval()
    pm = get_peft_model(m, lcfg)
    _randomize(pm, seed)
    pm.eval()
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, m.config.vocab_size, (2, 9), generator=g)
    out = pm(input_ids=ids)
    logits = out.logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             ids[:, 1:].reshape(-1))
    t = {"input_ids": ids.int(), "attention_mask": torch.ones_like(ids).int(),
         "logits": logits.detach(), "loss": loss.detach().reshape(1)}
    t.update(_grads(pm, loss))
    with torch.no_grad(), pm.disable_adapter():
        t["base_logits"] = pm(input_ids=ids).logits
    _save_case(fixtures, name, pm, base_rel, t, json.dumps(lcfg.to_dict(), default=str)[:2000])


def main(fixtures_dir, models_dir):
    from peft import LoraConfig
    torch.set_grad_enabled(True)
    out = os.path.join(fixtures_dir, "peft")
    os.makedirs(out, exist_ok=True)
    mfix = os.path.join(fixtures_dir, "models")
    tiny_bert = os.path.join(mfix, "tiny_bert")
    tiny_llama = os.path.join(mfix, "tiny_llama")
    _bert_case(out, models_dir, "bert_qv", tiny_bert, "tests/fixtures/models/tiny_bert",
               LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                          task_type="SEQ_CLS"), 11)
    _bert_case(out, models_dir, "bert_all_rslora", tiny_bert, "tests/fixtures/models/tiny_bert",
               LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", use_rslora=True,
                          rank_pattern={"intermediate.dense": 3}, alpha_pattern={"value": 5},
                          task_type="SEQ_CLS"), 12)
    _llama_case(out, "llama_qv", tiny_llama, "tests/fixtures/models/tiny_llama",
                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                           task_type="CAUSAL_LM"), 13)
    _llama_case(out, "llama_all_rslora", tiny_llama, "tests/fixtures/models/tiny_llama",
                LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", use_rslora=True,
                           rank_pattern={"down_proj": 3}, task_type="CAUSAL_LM"), 14)
    _llama_case(out, "llama_layers", tiny_llama, "tests/fixtures/models/tiny_llama",
                LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "k_proj", "o_proj", "up_proj"],
                           layers_to_transform=[1], layers_pattern="layers", lora_dropout=0.1,
                           task_type="CAUSAL_LM"), 16)
    minilm = os.path.join(models_dir, "all-MiniLM-L6-v2")
    if os.path.isdir(minilm):
        _bert_case(out, models_dir, "minilm_qv", minilm, "models/all-MiniLM-L6-v2",
                   LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                              modules_to_save=["classifier"], task_type="SEQ_CLS"), 15,
                   num_labels=2)
    else:
        print("  minilm_qv: skipped (run tools/fetch_models.sh)")
