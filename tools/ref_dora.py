"""Reference fixtures for DoRA (tests/peft/dora_test.cpp), made with Hugging Face PEFT 0.21.2
(LoraConfig(use_dora=True)).

Same layout as tools/ref_peft.py, under tests/fixtures/dora/: <case>/ is the PEFT adapter folder
(adapter_config.json with use_dora true; adapter_model.safetensors with lora_A.weight,
lora_B.weight and lora_magnitude_vector per module), <case>_ref.safetensors holds the batch,
PEFT's logits (eval mode), base_logits (adapter disabled), loss and grad.<key> for every adapter
tensor, lora_magnitude_vector included.

A, B are drawn nonzero and every magnitude is scaled by a random factor in [0.8, 1.2], so
m ≠ ‖W + s·B A‖ and every part of DoRA changes the output.

Cases:
  bert_qv          tiny BERT seq-cls, [query, value], r 4, alpha 8
  bert_all_rslora  tiny BERT, "all-linear", r 4, alpha 16, use_rslora, rank_pattern
                   intermediate.dense 3, alpha_pattern value 5
  llama_qv         tiny Llama causal LM, [q_proj, v_proj], r 4, alpha 8
  llama_all        tiny Llama, "all-linear", r 2, alpha 4, lora_dropout 0.1 (eval: no dropout)
  minilm_qv        all-MiniLM-L6-v2 seq-cls (2 labels), [query, value], r 4, alpha 8,
                   modules_to_save [classifier]
"""
import os

import torch

import ref_peft


def _randomize_dora(pm, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "lora_magnitude_vector" in n:
                p.mul_(0.8 + 0.4 * torch.rand(p.shape, generator=g))
            elif "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


_peft_grads = ref_peft._grads


def _grads_dora(pm, loss):
    # PEFT's live name ...lora_magnitude_vector.default.weight is saved as ...lora_magnitude_vector.
    return {k.replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): v
            for k, v in _peft_grads(pm, loss).items()}


def main(fixtures_dir, models_dir):
    from peft import LoraConfig
    torch.set_grad_enabled(True)
    out = os.path.join(fixtures_dir, "dora")
    os.makedirs(out, exist_ok=True)
    mfix = os.path.join(fixtures_dir, "models")
    tiny_bert = os.path.join(mfix, "tiny_bert")
    tiny_llama = os.path.join(mfix, "tiny_llama")
    ref_peft._randomize = _randomize_dora  # the cases below draw magnitudes too
    ref_peft._grads = _grads_dora
    ref_peft._bert_case(out, models_dir, "bert_qv", tiny_bert, "tests/fixtures/models/tiny_bert",
                        LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                   use_dora=True, task_type="SEQ_CLS"), 21)
    ref_peft._bert_case(out, models_dir, "bert_all_rslora", tiny_bert,
                        "tests/fixtures/models/tiny_bert",
                        LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", use_rslora=True,
                                   rank_pattern={"intermediate.dense": 3},
                                   alpha_pattern={"value": 5}, use_dora=True,
                                   task_type="SEQ_CLS"), 22)
    ref_peft._llama_case(out, "llama_qv", tiny_llama, "tests/fixtures/models/tiny_llama",
                         LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                    use_dora=True, task_type="CAUSAL_LM"), 23)
    ref_peft._llama_case(out, "llama_all", tiny_llama, "tests/fixtures/models/tiny_llama",
                         LoraConfig(r=2, lora_alpha=4, target_modules="all-linear",
                                    lora_dropout=0.1, use_dora=True, task_type="CAUSAL_LM"), 24)
    minilm = os.path.join(models_dir, "all-MiniLM-L6-v2")
    if not os.path.isdir(minilm):
        raise SystemExit("ref_dora: models/all-MiniLM-L6-v2 missing (run tools/fetch_models.sh)")
    ref_peft._bert_case(out, models_dir, "minilm_qv", minilm, "models/all-MiniLM-L6-v2",
                        LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                   modules_to_save=["classifier"], use_dora=True,
                                   task_type="SEQ_CLS"), 25, num_labels=2)
