"""Reference fixtures for the models/ layer (tests/models/), made with Hugging Face transformers.

Writes tests/fixtures/models/:
  tiny_bert/                 BertForSequenceClassification (random, seed 0), config.json + model.safetensors
  tiny_bert_ref.safetensors  input_ids/attention_mask/token_type_ids (padded batch) and transformers'
                             logits, last_hidden, mean_pooled; plus the gradients of
                             loss = cross_entropy(logits, labels) (mean over the batch) w.r.t.
                             inputs_embeds (grad_inputs_embeds) and the classifier (grad_classifier_*).
  tiny_roberta/, tiny_roberta_ref.safetensors        RobertaForSequenceClassification (pad id 1,
                             positions from the ids as transformers computes them), same contents
  tiny_distilbert/, tiny_distilbert_ref.safetensors  DistilBertForSequenceClassification, same
                             contents (no token_type_ids)
  tiny_llama/, tiny_llama_tied/   LlamaForCausalLM (random, GQA 4/2 heads), untied and tied lm_head
  tiny_llama_bf16/           tiny_llama with weights stored as BF16 (reference run in fp32 on the
                             rounded weights)
  tiny_llama.gguf, tiny_llama_tied.gguf   the same weights as llama.cpp's convert script writes
                             them: F32 tensors, Q/K rows permuted, `output` absent when tied
  tiny_llama_ref.safetensors ids [2, 9] and logits for each variant; a right-padded batch and a
                             left-padded batch (with HF-generate position ids) and their logits
                             (only positions with mask 1 are meaningful); the gradient of the
                             causal-LM loss (mean over shifted targets, labels = ids) w.r.t.
                             inputs_embeds for the untied model.
  minilm_ref.safetensors     all-MiniLM-L6-v2: ids/mask/token types of 5 sentences (padded batch),
                             last_hidden and mean_pooled (mask-weighted mean, as sentence-transformers)
  smollm2_ref.safetensors    SmolLM2-135M-Instruct Q4_1 GGUF dequantized by transformers (fp32):
                             2 sequences x 8 ids; logits restricted to 2048 fixed vocabulary columns
                             (`columns`: ids 0..1023 and 1024 seeded random ids above), plus the
                             full-vocabulary argmax and logsumexp of every row (keeps the file small
                             while still checking every column in aggregate).

All attention runs with attn_implementation="eager" in fp32, eval mode (no dropout).
"""
import json
import os
import shutil

import numpy as np
import torch
from safetensors.torch import save_file


def _llama_permute(w, n_head):
    # HF -> GGUF row order for attn_q/attn_k (llama.cpp convert_hf_to_gguf.py LlamaModel.permute).
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _write_llama_gguf(model, cfg, path, vocab):
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    # A minimal byte-level BPE vocabulary so that loaders which want tokenizer metadata accept it.
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([1] * len(vocab))
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(b + "attn_q.weight", _llama_permute(sd[p + "self_attn.q_proj.weight"], nh))
        w.add_tensor(b + "attn_k.weight", _llama_permute(sd[p + "self_attn.k_proj.weight"], nkv))
        w.add_tensor(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _perturb(model):
    # Random init has tiny LayerNorm/bias variation; perturb so that every parameter matters.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n or "layer_norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


def _encoder_fixture(model, out, name, ids, mask, tt, labels, word_embeddings, base):
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    kw = {"attention_mask": mask}
    if tt is not None:
        kw["token_type_ids"] = tt
    # Hidden states and logits from the ids (RoBERTa derives its position ids from them).
    with torch.no_grad():
        hid = base(input_ids=ids, **kw).last_hidden_state
        logits = model(input_ids=ids, **kw).logits
    emb = word_embeddings(ids).detach().requires_grad_(True)
    o = model(inputs_embeds=emb, **kw)
    loss = torch.nn.functional.cross_entropy(o.logits, labels)
    loss.backward()
    m = mask.unsqueeze(-1).float()
    pooled = (hid * m).sum(1) / m.sum(1).clamp(min=1e-9)
    head_w = model.classifier.out_proj.weight if hasattr(model.classifier, "out_proj") else model.classifier.weight
    head_b = model.classifier.out_proj.bias if hasattr(model.classifier, "out_proj") else model.classifier.bias
    t = {
        "input_ids": ids.int().contiguous(), "attention_mask": mask.int().contiguous(),
        "labels": labels.int(), "logits": logits.contiguous(), "last_hidden": hid.contiguous(),
        "mean_pooled": pooled.contiguous(), "loss": loss.detach().reshape(1),
        "logits_from_embeds": o.logits.detach().contiguous(),
        "grad_inputs_embeds": emb.grad.contiguous(),
        "grad_classifier_weight": head_w.grad.contiguous(),
        "grad_classifier_bias": head_b.grad.contiguous(),
    }
    if tt is not None:
        t["token_type_ids"] = tt.int().contiguous()
    save_file(t, os.path.join(out, name + "_ref.safetensors"))
    print(f"  {name}: logits {tuple(logits.shape)}, loss {loss.item():.6f}")


def _bert(out):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, vocab_size=99, max_position_embeddings=64,
                     type_vocab_size=2, num_labels=3, hidden_act="gelu", layer_norm_eps=1e-12,
                     attn_implementation="eager")
    model = BertForSequenceClassification(cfg).eval()
    _perturb(model)
    ids = torch.tensor([[2, 17, 45, 8, 91, 33, 3, 60, 12, 3],
                        [2, 5, 71, 3, 44, 3, 0, 0, 0, 0],
                        [2, 98, 3, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.long)
    mask = (torch.arange(10)[None, :] < torch.tensor([[10], [6], [3]])).long()
    tt = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
                       [0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
                       [0] * 10], dtype=torch.long)
    labels = torch.tensor([2, 0, 1])
    _encoder_fixture(model, out, "tiny_bert", ids, mask, tt, labels,
                     model.bert.embeddings.word_embeddings, model.bert)


def _roberta(out):
    from transformers import RobertaConfig, RobertaForSequenceClassification
    torch.manual_seed(3)
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, vocab_size=99, max_position_embeddings=66,
                        type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        num_labels=3, layer_norm_eps=1e-5, attn_implementation="eager")
    model = RobertaForSequenceClassification(cfg).eval()
    _perturb(model)
    # <s> = 0, </s> = 2, <pad> = 1 (RoBERTa's ids); padding on the right.
    ids = torch.tensor([[0, 17, 45, 8, 91, 33, 2, 60, 12, 2],
                        [0, 5, 71, 2, 44, 2, 1, 1, 1, 1],
                        [0, 98, 2, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.long)
    mask = (ids != 1).long()
    labels = torch.tensor([1, 2, 0])
    _encoder_fixture(model, out, "tiny_roberta", ids, mask, None, labels,
                     model.roberta.embeddings.word_embeddings, model.roberta)


def _distilbert(out):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification
    torch.manual_seed(4)
    cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, vocab_size=99,
                           max_position_embeddings=64, num_labels=3, activation="gelu",
                           attn_implementation="eager")
    model = DistilBertForSequenceClassification(cfg).eval()
    _perturb(model)
    ids = torch.tensor([[2, 17, 45, 8, 91, 33, 3, 60, 12, 3],
                        [2, 5, 71, 3, 44, 3, 0, 0, 0, 0],
                        [2, 98, 3, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    labels = torch.tensor([0, 2, 1])
    _encoder_fixture(model, out, "tiny_distilbert", ids, mask, None, labels,
                     model.distilbert.embeddings.word_embeddings, model.distilbert)


def _llama(out):
    from transformers import LlamaConfig, LlamaForCausalLM
    refs = {}
    vocab = [f"<t{i}>" for i in range(100)]
    ids = torch.tensor([[1, 17, 45, 8, 99, 33, 0, 60, 12], [1, 5, 71, 3, 44, 3, 90, 2, 7]])
    # right padding: rows 1 and 2 are 6 and 4 long; left padding: same tokens moved right.
    lens = torch.tensor([9, 6, 4])
    base = torch.tensor([[1, 23, 45, 67, 89, 11, 13, 15, 17],
                         [1, 4, 9, 16, 25, 36, 0, 0, 0],
                         [1, 50, 51, 52, 0, 0, 0, 0, 0]])
    rmask = (torch.arange(9)[None, :] < lens[:, None]).long()
    lids = torch.zeros_like(base)
    lmask = torch.zeros_like(rmask)
    for b in range(3):
        n = int(lens[b])
        lids[b, 9 - n:] = base[b, :n]
        lmask[b, 9 - n:] = 1
    lpos = lmask.cumsum(-1) - 1
    lpos.masked_fill_(lmask == 0, 1)  # as transformers' generate() prepares position ids
    refs["input_ids"] = ids.int()
    refs["pad_right_ids"] = base.int()
    refs["pad_right_mask"] = rmask.int()
    refs["pad_left_ids"] = lids.int()
    refs["pad_left_mask"] = lmask.int()
    refs["pad_left_positions"] = lpos.int()
    for name, tied in (("tiny_llama", False), ("tiny_llama_tied", True)):
        torch.manual_seed(1 if not tied else 2)
        cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=48, vocab_size=100,
                          max_position_embeddings=64, rope_theta=100000.0, rms_norm_eps=1e-5,
                          tie_word_embeddings=tied, attn_implementation="eager")
        model = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(0.1 * torch.randn_like(p))
                else:
                    p.mul_(5.0)  # init std 0.02 is nearly linear; make the nonlinearity count
        d = os.path.join(out, name)
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d, safe_serialization=True)
        _write_llama_gguf(model, cfg, os.path.join(out, name + ".gguf"), vocab)
        with torch.no_grad():
            refs[name + "_logits"] = model(ids).logits.contiguous()
            refs[name + "_pad_right_logits"] = model(base, attention_mask=rmask).logits.contiguous()
            refs[name + "_pad_left_logits"] = model(lids, attention_mask=lmask,
                                                    position_ids=lpos).logits.contiguous()
        if not tied:
            emb = model.model.embed_tokens(ids).detach().requires_grad_(True)
            o = model(inputs_embeds=emb, labels=ids)
            o.loss.backward()
            refs["tiny_llama_loss"] = o.loss.detach().reshape(1)
            refs["tiny_llama_grad_inputs_embeds"] = emb.grad.contiguous()
            # BF16 storage variant of the same weights.
            d16 = os.path.join(out, "tiny_llama_bf16")
            shutil.rmtree(d16, ignore_errors=True)
            m16 = LlamaForCausalLM(cfg).eval()
            m16.load_state_dict(model.state_dict())
            m16 = m16.to(torch.bfloat16)
            m16.save_pretrained(d16, safe_serialization=True)
            m32 = LlamaForCausalLM.from_pretrained(d16, dtype=torch.float32,
                                                   attn_implementation="eager").eval()
            with torch.no_grad():
                refs["tiny_llama_bf16_logits"] = m32(ids).logits.contiguous()
        # transformers' own GGUF loader on our file: must give the same logits (checks the
        # permutation we wrote against the one transformers undoes).
        try:
            from transformers import AutoModelForCausalLM
            mg = AutoModelForCausalLM.from_pretrained(out, gguf_file=name + ".gguf",
                                                      dtype=torch.float32,
                                                      attn_implementation="eager").eval()
            with torch.no_grad():
                diff = (mg(ids).logits - refs[name + "_logits"]).abs().max().item()
            print(f"  {name}: transformers GGUF load vs HF folder max abs diff {diff:.3g}")
            assert diff < 1e-5, f"{name}: GGUF round trip differs by {diff}"
        except ImportError as e:
            print(f"  {name}: transformers cannot load the GGUF ({e})")
    save_file({k: v.contiguous() for k, v in refs.items()},
              os.path.join(out, "tiny_llama_ref.safetensors"))
    print(f"  tiny_llama: loss {refs['tiny_llama_loss'].item():.6f}")


MINILM_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "LoRA adapts large language models with low-rank updates.",
    "Hello world!",
    "A CPU can fine-tune small transformers, slowly but privately, and that is fine.",
    "naïve café résumé — unicode works?",
]


def _minilm(out, models_dir):
    from transformers import AutoModel, AutoTokenizer
    d = os.path.join(models_dir, "all-MiniLM-L6-v2")
    if not os.path.isfile(os.path.join(d, "config.json")):
        raise SystemExit(f"ref_models: {d} missing; run tools/fetch_models.sh first")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    enc = tok(MINILM_SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (last * m).sum(1) / m.sum(1).clamp(min=1e-9)
    save_file({
        "input_ids": enc["input_ids"].int().contiguous(),
        "attention_mask": enc["attention_mask"].int().contiguous(),
        "token_type_ids": enc["token_type_ids"].int().contiguous(),
        "last_hidden": last.contiguous(), "mean_pooled": pooled.contiguous(),
    }, os.path.join(out, "minilm_ref.safetensors"), metadata={"sentences": json.dumps(MINILM_SENTENCES)})
    print(f"  minilm: ids {tuple(enc['input_ids'].shape)}")


def _smollm2(out, models_dir):
    from transformers import AutoModelForCausalLM
    d = os.path.join(models_dir, "SmolLM2-135M-Instruct")
    ggufs = sorted(f for f in os.listdir(d) if f.endswith(".gguf")) if os.path.isdir(d) else []
    if not ggufs:
        raise SystemExit(f"ref_models: no .gguf in {d}; run tools/fetch_models.sh first")
    f = "SmolLM2-135M-Instruct.Q4_1.gguf" if "SmolLM2-135M-Instruct.Q4_1.gguf" in ggufs else ggufs[0]
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = torch.tensor([[1, 504, 2365, 6354, 16438, 27003, 690, 260],
                        [1, 9690, 198, 2683, 359, 253, 5356, 5646]])
    with torch.no_grad():
        logits = model(ids).logits  # [2, 8, V]
    V = logits.shape[-1]
    g = torch.Generator().manual_seed(0)
    cols = torch.cat([torch.arange(1024), 1024 + torch.randperm(V - 1024, generator=g)[:1024].sort().values])
    save_file({
        "input_ids": ids.int(), "columns": cols.int().contiguous(),
        "logits": logits[..., cols].contiguous(),
        "argmax": logits.argmax(-1).int().contiguous(),
        "logsumexp": torch.logsumexp(logits, -1).contiguous(),
    }, os.path.join(out, "smollm2_ref.safetensors"), metadata={"gguf_file": f})
    print(f"  smollm2 ({f}): logits {tuple(logits.shape)} argmax {logits.argmax(-1).tolist()}")


def main(fixtures_dir, models_dir):
    models_dir = os.environ.get("LORAFIT_MODELS_DIR", models_dir)
    out = os.path.join(fixtures_dir, "models")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    parts = os.environ.get("LORAFIT_REF_MODELS_PARTS", "bert,roberta,distilbert,llama,minilm,smollm2")
    parts = parts.split(",")
    if "bert" in parts:
        _bert(out)
    if "roberta" in parts:
        _roberta(out)
    if "distilbert" in parts:
        _distilbert(out)
    if "llama" in parts:
        _llama(out)
    if "minilm" in parts:
        _minilm(out, models_dir)
    if "smollm2" in parts:
        _smollm2(out, models_dir)
