#!/usr/bin/env python3
"""Expected chat-template renderings, recorded with transformers' own renderer
(`transformers.utils.chat_template_utils.render_jinja_template`, what `apply_chat_template` uses).

    chat_templates.py models/tests/fixtures/templates  # writes expected.json there
"""
import json
import os
import sys

from transformers.utils.chat_template_utils import render_jinja_template

TOKENS = {
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "qwen2.5": (None, "<|im_end|>"),
    "llama3.1": ("<|begin_of_text|>", "<|eot_id|>"),
    "deepseek-r1-distill": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "system", "content": "You are a careful math tutor."},
     {"role": "user", "content": "Solve 3x - 7 = 11.\nShow your steps."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Say \"quoted\" and {braces} and 한국어 🙂."}],
    [{"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "<think>\nTwo plus two is four.\n</think>\n\nThe answer is \\boxed{4}."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "  leading and trailing spaces  "},
     {"role": "assistant", "content": "ok"}],
]

out = []
d = sys.argv[1]
for name, (bos, eos) in TOKENS.items():
    with open(os.path.join(d, f"{name}.jinja"), encoding="utf-8") as f:
        template = f.read()
    for conv in CONVERSATIONS:
        for gen in (True, False):
            text = render_jinja_template([conv], chat_template=template, add_generation_prompt=gen,
                                         bos_token=bos, eos_token=eos)[0][0]
            out.append({"template": name, "messages": conv, "add_generation_prompt": gen, "text": text})
with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False, indent=1)
print(len(out), "renderings")
