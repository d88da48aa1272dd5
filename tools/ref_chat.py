"""Chat-template fixtures: what transformers' apply_chat_template renders for a few conversations
with the chat templates lorafit recognises, and the SmolLM2 ids of the rendered text.

Writes tests/fixtures/tokens/chat.json:
  {"templates": {name: jinja source}, "bos_token": ..., "eos_token": ...,
   "cases": [{"template", "messages", "add_generation_prompt", "text", "ids" (smollm2 only)}]}
The C++ test (tests/text) renders the same conversations with text::ChatTemplate and compares the
text exactly, and the ids of Tokenizer::encode(text, false) with "ids".
"""
import json
import os

CHATML_PLAIN = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Meta's Llama 3 instruct template (tokenizer_config.json of Meta-Llama-3-8B-Instruct).
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
          " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
          "<|end_header_id|>\\n\\n' }}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "You answer in verse."},
     {"role": "user", "content": "Describe the sea."},
     {"role": "assistant", "content": "Grey waves roll,\nand gulls cry over them."}],
    [{"role": "user", "content": "  Count: 1, 2, 3  "},
     {"role": "assistant", "content": "4, 5, 6"},
     {"role": "user", "content": "And then?"},
     {"role": "assistant", "content": "7 — and so on. Ünïcödé ✓"}],
    [{"role": "user", "content": "Only a question, no answer yet"}],
]


def main(fixtures_dir, models_dir):
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import AutoTokenizer

    smol_dir = os.path.join(models_dir, "SmolLM2-135M-Instruct")
    tf = AutoTokenizer.from_pretrained(smol_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    # The ids as the model's own tokenizer gives them (digits split; see ref_tokens.py).
    hub = Tokenizer.from_str(tf.backend_tokenizer.to_str())
    hub.no_truncation()
    hub.no_padding()
    hub.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    templates = {"smollm2": tf.chat_template, "chatml": CHATML_PLAIN, "llama3": LLAMA3}
    assert "<|im_start|>" in templates["smollm2"], "SmolLM2's GGUF chat template was not read"
    cases = []
    for name, tpl in templates.items():
        for conv in CONVERSATIONS:
            for gen in (False, True):
                if gen and conv[-1]["role"] == "assistant":
                    continue
                text = tf.apply_chat_template(conv, chat_template=tpl, tokenize=False,
                                              add_generation_prompt=gen)
                case = {"template": name, "messages": conv, "add_generation_prompt": gen, "text": text}
                if name == "smollm2":
                    case["ids"] = hub.encode(text, add_special_tokens=False).ids
                cases.append(case)
    out = {"templates": templates, "bos_token": tf.bos_token, "eos_token": tf.eos_token,
           "cases": cases}
    path = os.path.join(fixtures_dir, "tokens", "chat.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print(f"[ref_chat] {len(cases)} cases -> {path}")
