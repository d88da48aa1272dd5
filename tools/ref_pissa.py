"""Reference fixtures for loading PEFT adapters whose init changes the base (PiSSA, OLoRA) and the
other init_lora_weights values PEFT writes (tests/peft/pissa_test.cpp), made with Hugging Face
PEFT 0.21 on the tiny Llama and tiny BERT (tests/fixtures/models/), fp32, eager attention.

Each case is made as a PEFT user makes it: get_peft_model with the init (PiSSA / OLoRA move the
top of W into A, B and leave W_res = W - s·B A in the base), the initial adapter saved, then a
few AdamW steps on random data so that A and B move off their init, then save_pretrained. The
reference is what PEFT computes when it *loads* the folder on a fresh base:
PeftModel.from_pretrained (which runs the init on the base once, then loads the saved A and B).

tests/fixtures/pissa/
  tokenizer.json               a small WordPiece vocabulary (ids < 99), so that `lorafit logits`
                               can run the tiny models (the tests copy it next to config.json)
  <case>/                      the adapter folder as PEFT saved it
  <case>_init/                 (pissa / olora cases) the adapter saved right after init, the
                               folder PEFT's path_initial_model_for_weight_conversion needs
  <case>_lora/                 (llama_pissa, llama_olora, bert_pissa) PEFT's conversion to a plain LoRA:
                               save_pretrained(..., path_initial_model_for_weight_conversion=<case>_init)
                               (bert_pissa: PEFT drops the classifier from it and then cannot load
                               it; metadata peft_converted_load_error)
  <case>_ref.safetensors
    input_ids, attention_mask (+ token_type_ids)   a fixed batch
    logits                     PeftModel.from_pretrained(fresh base, <case>) on the batch (eval)
    residual.<module>          the base weight after that load (W_res), per adapted module
    merged.<module>            merge_and_unload() weights of the adapted modules
    cli.ids.<i>, cli.logits.<i>  prompt i of metadata "prompts" (JSON list) encoded with
                               tokenizer.json (special tokens on) and PEFT's logits for it alone
                               ([T, V] Llama, [L] BERT), for `lorafit logits --out`
    lora.logits                (conversion cases) the converted folder loaded on the *original* base
                               (bert_pissa: with the trained classifier put back)
  metadata: base (fixture model folder), init, prompts, and for pissa_niter_4:
    logits.seed1 / spread      PEFT's from_pretrained under another torch seed: svd_lowrank is
                               randomized (torch's global RNG), so PEFT's own loads differ
    logits.exact               the same folder loaded by PEFT with init "pissa" (exact SVD)
Cases: llama_pissa, llama_olora, llama_pissa_niter (pissa_niter_4), bert_pissa, bert_olora (SEQ_CLS,
classifier in modules_to_save), llama_eva, llama_orthogonal, llama_mica (inits that leave the
base alone).
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file

WORDS = ["good", "bad", "movie", "plot", "the", "was", "very", "not", "a", "fine", "film",
         "story", "and", "but", "it", "is"]
PROMPTS = ["the movie was very good", "bad plot", "it is not a fine film and the story was bad"]


def _tokenizer_json(path):
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for i, w in enumerate(WORDS):
        vocab[w] = 4 + i
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t, i in [("[PAD]", 0), ("[UNK]", 1), ("[CLS]", 2), ("[SEP]", 3)]],
        "normalizer": None,
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": None,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }
    with open(path, "w") as f:
        json.dump(tj, f, indent=1)


def _load_base(kind, model_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    cls = AutoModelForCausalLM if kind == "llama" else AutoModelForSequenceClassification
    return cls.from_pretrained(model_dir, attn_implementation="eager").float().eval()


def _batch(kind, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "llama":
        ids = torch.randint(0, vocab, (2, 9), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    B, T = 3, 7
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 5:] = 0
    ids[mask == 0] = 0
    tt = torch.zeros(B, T, dtype=torch.long)
    tt[0, 4:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def _train_steps(pm, kind, vocab, seed, steps=5, lr=2e-2):
    """A few AdamW steps on random data: A and B leave their init as in a real run."""
    g = torch.Generator().manual_seed(seed + 100)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    pm.train()
    for _ in range(steps):
        if kind == "llama":
            ids = torch.randint(0, vocab, (4, 8), generator=g)
            logits = pm(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     ids[:, 1:].reshape(-1))
        else:
            ids = torch.randint(4, vocab, (4, 6), generator=g)
            labels = torch.randint(0, pm.base_model.model.config.num_labels, (4,), generator=g)
            loss = torch.nn.functional.cross_entropy(pm(input_ids=ids).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.eval()


def _fix_base_path(d, base_rel):
    p = os.path.join(d, "adapter_config.json")
    with open(p) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = base_rel
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def _lora_modules(pm):
    return {n: m for n, m in pm.base_model.model.named_modules()
            if hasattr(m, "lora_A") and "default" in m.lora_A}


def _forward(m, batch):
    with torch.no_grad():
        return m(**batch).logits.detach().clone()


def _case(out, name, kind, model_dir, base_rel, lcfg, seed, convert=False, tok=None):
    from peft import PeftModel, get_peft_model
    d = os.path.join(out, name)
    init_d = os.path.join(out, name + "_init")
    lora_d = os.path.join(out, name + "_lora")
    for x in (d, init_d, lora_d):
        if os.path.exists(x):
            shutil.rmtree(x)
    torch.manual_seed(seed)
    base = _load_base(kind, model_dir)
    vocab = base.config.vocab_size
    pm = get_peft_model(base, lcfg)
    init = str(lcfg.init_lora_weights)
    changes_base = init.startswith("pissa") or init == "olora"
    if changes_base:
        pm.save_pretrained(init_d)
    _train_steps(pm, kind, vocab, seed)
    pm.save_pretrained(d)
    _fix_base_path(d, base_rel)
    if convert:
        pm.save_pretrained(lora_d, path_initial_model_for_weight_conversion=init_d)
        _fix_base_path(lora_d, base_rel)
    if changes_base:
        _fix_base_path(init_d, base_rel)
    for x in (d, init_d, lora_d):  # PEFT's model card: 200 lines of template per folder
        if os.path.exists(os.path.join(x, "README.md")):
            os.remove(os.path.join(x, "README.md"))

    # The reference: PEFT loading the folder on a fresh base.
    batch = _batch(kind, vocab, seed + 1)
    torch.manual_seed(1234)
    loaded = PeftModel.from_pretrained(_load_base(kind, model_dir), d).eval()
    t = {k: v.int() for k, v in batch.items()}
    t["logits"] = _forward(loaded, batch)
    mods = _lora_modules(loaded)
    for mn, m in mods.items():
        t["residual." + mn] = m.base_layer.weight.detach().clone().contiguous()
    meta = {"base": base_rel, "init": init, "prompts": json.dumps(PROMPTS),
            "case": json.dumps(lcfg.to_dict(), default=str)[:2000]}
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(p).ids])
        t[f"cli.ids.{i}"] = ids[0].int()
        with torch.no_grad():
            lg = loaded(input_ids=ids).logits[0]
        t[f"cli.logits.{i}"] = lg.detach().clone().contiguous()
    if init.startswith("pissa_niter"):
        torch.manual_seed(99)
        again = PeftModel.from_pretrained(_load_base(kind, model_dir), d).eval()
        t["logits.seed1"] = _forward(again, batch)
        from peft import PeftConfig
        pc = PeftConfig.from_pretrained(d)
        pc.init_lora_weights = "pissa"
        exact = PeftModel.from_pretrained(_load_base(kind, model_dir), d, config=pc).eval()
        t["logits.exact"] = _forward(exact, batch)
        meta["spread"] = "%.3g" % (t["logits"] - t["logits.seed1"]).abs().max().item()
        meta["niter_vs_exact"] = "%.3g" % (t["logits"] - t["logits.exact"]).abs().max().item()
    if convert:
        # PEFT's subtract_mutated_init keeps only lora_A / lora_B keys, so a converted SEQ_CLS
        # adapter loses its trained classifier and PEFT cannot load it (KeyError on
        # classifier.weight). The reference is that folder with the saved head put back.
        try:
            plain = PeftModel.from_pretrained(_load_base(kind, model_dir), lora_d).eval()
        except KeyError as e:
            meta["peft_converted_load_error"] = f"KeyError {e}"
            import tempfile
            from safetensors.torch import load_file
            with tempfile.TemporaryDirectory() as tmp:
                fixed = os.path.join(tmp, "lora")
                shutil.copytree(lora_d, fixed)
                st = load_file(os.path.join(fixed, "adapter_model.safetensors"))
                for k, v in load_file(os.path.join(d, "adapter_model.safetensors")).items():
                    if "lora_" not in k:
                        st[k] = v
                save_file(st, os.path.join(fixed, "adapter_model.safetensors"), metadata={"format": "pt"})
                plain = PeftModel.from_pretrained(_load_base(kind, model_dir), fixed).eval()
        t["lora.logits"] = _forward(plain, batch)
    merged = loaded.merge_and_unload()
    named = dict(merged.named_modules())
    for mn in mods:
        t["merged." + mn] = named[mn].weight.detach().clone().contiguous()
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out, name + "_ref.safetensors"),
              metadata=meta)
    extra = ""
    if "spread" in meta:
        extra = f"; PEFT seed-to-seed spread {meta['spread']}, niter vs exact {meta['niter_vs_exact']}"
    if convert:
        extra += "; converted max |logits - pissa logits| = %.3g" % (
            (t["lora.logits"] - t["logits"]).abs().max().item())
    print(f"  {name}: {len(mods)} modules, base moved {changes_base}{extra}")


def main(fixtures_dir, models_dir):
    from peft import LoraConfig
    from tokenizers import Tokenizer
    out = os.path.join(fixtures_dir, "pissa")
    os.makedirs(out, exist_ok=True)
    _tokenizer_json(os.path.join(out, "tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    mfix = os.path.join(fixtures_dir, "models")
    llama = (os.path.join(mfix, "tiny_llama"), "tests/fixtures/models/tiny_llama")
    bert = (os.path.join(mfix, "tiny_bert"), "tests/fixtures/models/tiny_bert")
    L = dict(target_modules=["q_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    _case(out, "llama_pissa", "llama", *llama,
          LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa", **L), 21, convert=True, tok=tok)
    _case(out, "llama_olora", "llama", *llama,
          LoraConfig(r=4, lora_alpha=8, init_lora_weights="olora", **L), 22, convert=True, tok=tok)
    _case(out, "llama_pissa_niter", "llama", *llama,
          LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa_niter_4", **L), 23, tok=tok)
    B = dict(target_modules=["query", "value"], task_type="SEQ_CLS")
    _case(out, "bert_pissa", "bert", *bert,
          LoraConfig(r=4, lora_alpha=16, init_lora_weights="pissa", **B), 24, convert=True, tok=tok)
    _case(out, "bert_olora", "bert", *bert,
          LoraConfig(r=2, lora_alpha=2, init_lora_weights="olora", use_rslora=True, **B), 25, tok=tok)
    _case(out, "llama_eva", "llama", *llama,
          LoraConfig(r=4, lora_alpha=8, init_lora_weights="eva", **L), 26, tok=tok)
    _case(out, "llama_orthogonal", "llama", *llama,
          LoraConfig(r=4, lora_alpha=8, init_lora_weights="orthogonal", **L), 27, tok=tok)
    _case(out, "llama_mica", "llama", *llama,
          LoraConfig(r=4, lora_alpha=8, init_lora_weights="mica", **L), 28, tok=tok)
