"""QLoRA interop fixture on the tiny Llama (tests/fixtures/qlora, read by tests/peft/qlora_test.cpp).

  tools/make_reference.sh qlora      (or: python tools/ref_qlora.py)

transformers + bitsandbytes 0.50 on the CPU:
  0. tiny_llama64/: a random F32 tiny Llama (hidden 64, MLP 128, 2 layers, vocab 100; the CPU
     kernels of bitsandbytes need rows of whole 64-value blocks);
  1. tiny_llama_bnb4/: tiny_llama64 loaded with
     BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
     bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=float32) and save_pretrained: the
     4-bit layout transformers writes (packed uint8 weights + quant_state tensors,
     quantization_config in config.json);
  2. qlora_adapter/: a PEFT LoRA (r 4, alpha 8, all linear layers) trained 8 steps with AdamW on
     that 4-bit model (QLoRA as the QLoRA paper runs it: prepare_model_for_kbit_training off, the
     frozen base in NF4, the adapter in fp32), saved with save_pretrained;
  3. ref.safetensors: input_ids [2, 9] (I32), base_logits (the 4-bit model's logits) and
     adapter_logits (with the trained adapter), both F32 [2, 9, 100].
"""
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fp32_kernels(model):
    """bitsandbytes 0.50 switches a Linear4bit in eval mode on a CPU with AVX512-BF16 to a
    repacked layout with bf16 absmax and bf16 arithmetic (about 2e-2 off in these logits); the
    generic path dequantizes to fp32 and multiplies in fp32, as lorafit does."""
    for mod in model.modules():
        if type(mod).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4"):
            mod.support_avx512bf16_for_cpu = False


def main(fixtures=os.path.join(ROOT, "tests", "fixtures"), models=os.path.join(ROOT, "models")):
    out = os.path.join(fixtures, "qlora")
    os.makedirs(out, exist_ok=True)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from transformers import LlamaConfig, LlamaForCausalLM

    # bitsandbytes' CPU kernels need rows of whole 64-value blocks (the tiny_llama fixture's 32
    # and 48 are not), so this fixture has its own tiny Llama: hidden 64, MLP 128.
    torch.manual_seed(0)
    src = os.path.join(out, "tiny_llama64")
    c = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2)
    f32 = LlamaForCausalLM(c)
    with torch.no_grad():  # weights large enough that the 4-bit rounding shows in the logits
        for p in f32.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    f32.save_pretrained(src)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(src, quantization_config=bnb, dtype=torch.float32,
                                             device_map="cpu", attn_implementation="eager")
    m.eval()
    fp32_kernels(m)
    base_dir = os.path.join(out, "tiny_llama_bnb4")
    m.save_pretrained(base_dir)
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 2, 7, 11], [3, 4, 50, 60, 70, 80, 90, 99, 0]])
    with torch.no_grad():
        base_logits = m(input_ids=ids).logits.float().clone()
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                     task_type="CAUSAL_LM")
    pm = get_peft_model(m, cfg)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    pm.train()
    for step in range(8):
        x = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(step))
        loss = pm(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.eval()
    with torch.no_grad():
        adapter_logits = pm(input_ids=ids).logits.float().clone()
    ad = os.path.join(out, "qlora_adapter")
    pm.save_pretrained(ad)
    # No machine paths in the fixture: the base named relative to the repository, no model card.
    import json
    cfg_path = os.path.join(ad, "adapter_config.json")
    j = json.load(open(cfg_path))
    j["base_model_name_or_path"] = "tests/fixtures/qlora/tiny_llama_bnb4"
    json.dump(j, open(cfg_path, "w"), indent=2, sort_keys=True)
    if os.path.exists(os.path.join(ad, "README.md")):
        os.remove(os.path.join(ad, "README.md"))
    save_file({"input_ids": ids.to(torch.int32), "base_logits": base_logits,
               "adapter_logits": adapter_logits}, os.path.join(out, "ref.safetensors"))
    print(f"wrote {out}: base logits |max| {base_logits.abs().max():.3g}, adapter moves them by "
          f"{(adapter_logits - base_logits).abs().max():.3g}")


if __name__ == "__main__":
    main()
