"""Reference fixtures for AdaLoRA (tests/peft/adalora_test.cpp), made with PEFT 0.21.2.

Writes under tests/fixtures/adalora/:
  bert_adalora/             PEFT AdaLoRA folder (tiny BERT seq-cls, query/value, init_r 4, random
                            nonzero A, E, B), rank_pattern null (unpruned)
  bert_adalora_ref.safetensors   on a fixed batch (eval mode: no dropout): input_ids,
                            attention_mask, token_type_ids, labels, logits, ce (cross-entropy),
                            orth (the orthogonal-regularization term PEFT adds: loss = ce + orth),
                            grad.<key> of that loss for every adapter tensor
  run/                      query, value and intermediate.dense of both layers (6 modules),
                            init_r 4, target_r 2, tinit 6, tfinal 12, deltaT 3, total_step 60:
                            the adapter after a 60-step PEFT AdaLoRA training (pruned by its final
                            rank_pattern, exactly as save_pretrained writes it)
  run_ref.safetensors       what RankAllocator saw and did at every step t = 1..60 (called as
                            PEFT documents: loss.backward(); optimizer.step();
                            update_and_allocate(t); zero_grad()), stacked over [T, L, ...] with L
                            the adapted modules in module order:
                              A.<l>, gA.<l> [T, r, in]; E.<l>, gE.<l> [T, r, 1]; B.<l>, gB.<l>
                                 [T, out, r]: layer l's weights after optimizer.step() and grads
                              budget [T] (budget_schedule(t)), masked [T] (1: lora_E was masked)
                              threshold [T] (kthvalue result when computed, else nan; fp32
                                 like the scores, so exact)
                              scores [T, L, r] (the triplet scores when a threshold was computed)
                              keep [T, L, r] (1 kept, 0 masked; -1 when no mask that step)
                              E_after [T, L, r] (lora_E after update_and_allocate)
                              eval_ids, eval_mask, eval_tt, eval_logits: the trained model's
                                 logits (eval mode) on a fixed batch
                            metadata: layers (JSON list of module paths), rank_pattern (JSON,
                            final), init_bgt, target_bgt
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file

T = 60


def _batch(g, vocab, B=4, L=9):
    ids = torch.randint(3, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    ids[mask == 0] = 0
    tt = torch.zeros(B, L, dtype=torch.long)
    tt[0, 5:] = 1
    return ids, mask, tt


def _fix_base(d, base_rel):
    p = os.path.join(d, "adapter_config.json")
    with open(p) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = base_rel
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def _parity(out, tiny_bert, base_rel):
    from transformers import AutoModelForSequenceClassification
    from peft import AdaLoraConfig, get_peft_model
    torch.manual_seed(21)
    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, attn_implementation="eager").float()
    cfg = AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, target_modules=["query", "value"],
                        total_step=T, tinit=5, tfinal=10, orth_reg_weight=0.3, task_type="SEQ_CLS")
    pm = get_peft_model(m, cfg)
    g = torch.Generator().manual_seed(22)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pm.eval()  # no dropout anywhere (BERT's own dropout too); the orth term is still added
    ids, mask, tt = _batch(g, m.config.vocab_size)
    labels = torch.randint(0, m.config.num_labels, (ids.shape[0],), generator=g)
    o = pm(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels)
    ce = torch.nn.functional.cross_entropy(o.logits, labels)
    pm.zero_grad()
    o.loss.backward()
    t = {"input_ids": ids.int(), "attention_mask": mask.int(), "token_type_ids": tt.int(),
         "labels": labels.int(), "logits": o.logits.detach(), "ce": ce.detach().reshape(1),
         "orth": (o.loss - ce).detach().reshape(1)}
    for n, p in pm.named_parameters():
        if p.grad is not None:
            k = n.replace(".default", "").replace(".modules_to_save", "")
            t["grad." + k] = p.grad.detach().clone()
    d = os.path.join(out, "bert_adalora")
    if os.path.exists(d):
        shutil.rmtree(d)
    pm.save_pretrained(d)
    _fix_base(d, base_rel)
    trainable, total = pm.get_nb_trainable_parameters()
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out, "bert_adalora_ref.safetensors"),
              metadata={"trainable": str(trainable), "all": str(total)})
    print(f"  bert_adalora: loss {o.loss.item():.6f} (orth {t['orth'].item():.6f}), "
          f"trainable {trainable:,} / {total:,}")


def _run(out, tiny_bert, base_rel):
    from transformers import AutoModelForSequenceClassification
    from peft import AdaLoraConfig, get_peft_model
    from peft.tuners.adalora.layer import RankAllocator
    torch.manual_seed(31)
    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, attn_implementation="eager").float()
    cfg = AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8,
                        target_modules=["query", "value", "intermediate.dense"],
                        total_step=T, tinit=6, tfinal=12, deltaT=3, beta1=0.85, beta2=0.85,
                        orth_reg_weight=0.5, task_type="SEQ_CLS")
    pm = get_peft_model(m, cfg)
    pm.train()
    model = pm.base_model
    alloc = model.rankallocator
    layers = [n[: -len(".lora_A.default")] for n, _ in model.model.named_parameters()
              if n.endswith("lora_A.default")]
    mods = [model.model.get_submodule(p) for p in layers]
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=2e-2)
    g = torch.Generator().manual_seed(32)
    vocab, nl = m.config.vocab_size, m.config.num_labels

    rec = {}
    orig_kth = torch.kthvalue
    orig_mask = RankAllocator.mask_to_budget

    def kth(x, k, *a, **kw):
        r = orig_kth(x, k, *a, **kw)
        rec["scores"] = x.detach().clone()
        rec["thr"] = r[0].item()
        return r

    def mask_to_budget(self, model_, budget):
        rp = orig_mask(self, model_, budget)
        rec["rp"] = rp
        return rp

    torch.kthvalue = kth
    RankAllocator.mask_to_budget = mask_to_budget
    st = {"E_after": []}
    budget, masked, thr, scores, keep = [], [], [], [], []
    r = cfg.init_r
    try:
        for step in range(1, T + 1):
            ids, mask, tt = _batch(g, vocab)
            labels = torch.randint(0, nl, (ids.shape[0],), generator=g)
            loss = pm(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels).loss
            loss.backward()
            opt.step()
            for li, md in enumerate(mods):
                for k in ["A", "E", "B"]:
                    p = getattr(md, "lora_" + k)["default"]
                    st.setdefault(f"{k}.{li}", []).append(p.detach().clone())
                    st.setdefault(f"g{k}.{li}", []).append(p.grad.detach().clone())
            rec.clear()
            frozen = step > cfg.total_step - cfg.tfinal
            model.update_and_allocate(step)
            st["E_after"].append(torch.stack([md.lora_E["default"].detach().clone().view(-1) for md in mods]))
            budget.append(alloc.budget_schedule(step)[0])
            if "rp" in rec:
                masked.append(1)
                thr.append(rec["thr"])
                sc = rec["scores"].view(len(mods), r)
                scores.append(sc)
                keep.append(torch.tensor([rec["rp"][p + ".lora_E.default"] for p in layers]).int())
            elif frozen:
                masked.append(1)
                thr.append(float("nan"))
                scores.append(torch.zeros(len(mods), r))
                rp = cfg.rank_pattern
                keep.append(torch.tensor([rp[p + ".lora_E.default"] for p in layers]).int())
            else:
                masked.append(0)
                thr.append(float("nan"))
                scores.append(torch.zeros(len(mods), r))
                keep.append(-torch.ones(len(mods), r, dtype=torch.int32))
            opt.zero_grad()
    finally:
        torch.kthvalue = orig_kth
        RankAllocator.mask_to_budget = orig_mask

    final_rp = {k.replace(".default", ""): v for k, v in cfg.rank_pattern.items()}
    pm.eval()
    ge = torch.Generator().manual_seed(33)
    ids, mask, tt = _batch(ge, vocab)
    with torch.no_grad():
        logits = pm(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
    d = os.path.join(out, "run")
    if os.path.exists(d):
        shutil.rmtree(d)
    pm.save_pretrained(d)
    _fix_base(d, base_rel)
    t = {k: torch.stack(v).contiguous() for k, v in st.items()}
    t.update({"budget": torch.tensor(budget, dtype=torch.int32),
              "masked": torch.tensor(masked, dtype=torch.int32),
              "threshold": torch.tensor(thr, dtype=torch.float32),
              "scores": torch.stack(scores).float().contiguous(),
              "keep": torch.stack(keep).int().contiguous(),
              "eval_ids": ids.int(), "eval_mask": mask.int(), "eval_tt": tt.int(),
              "eval_logits": logits.contiguous()})
    save_file(t, os.path.join(out, "run_ref.safetensors"),
              metadata={"layers": json.dumps(layers), "rank_pattern": json.dumps(final_rp),
                        "init_bgt": str(alloc.init_bgt), "target_bgt": str(alloc.target_bgt)})
    print(f"  run: {T} steps, budgets {budget[0]} -> {budget[-1]}, masked at {sum(masked)} steps, "
          f"final ranks {[sum(v) for v in final_rp.values()]}")


def main(fixtures_dir, models_dir):
    torch.set_grad_enabled(True)
    torch.set_num_threads(1)
    out = os.path.join(fixtures_dir, "adalora")
    os.makedirs(out, exist_ok=True)
    tiny_bert = os.path.join(fixtures_dir, "models", "tiny_bert")
    base_rel = "tests/fixtures/models/tiny_bert"
    _parity(out, tiny_bert, base_rel)
    _run(out, tiny_bert, base_rel)
