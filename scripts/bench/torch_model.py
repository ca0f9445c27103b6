#!/usr/bin/env python3
"""PyTorch eager (transformers) on the shapes of `distill bench model`; prints one JSON line.

    torch_model.py MODEL_DIR forward,generate,train [BATCHxSEQ for the training step]
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

model_dir, parts = sys.argv[1], sys.argv[2].split(",")
train_b, train_t = (int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "4x512").split("x"))
torch.manual_seed(0)
out = {"torch": torch.__version__, "threads": torch.get_num_threads()}


def ids(b, t):
    return (17 + (torch.arange(b * t) * 7919) % 40000).reshape(b, t)


def timed(reps, f):
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
if "forward" in parts:
    fwd = {}
    for b, t in [(1, 256), (8, 256)]:
        x = ids(b, t)
        with torch.no_grad():
            s = timed(3, lambda: model(input_ids=x).logits)
        fwd[f"b{b}_t{t}_tokens_s"] = b * t / s
    out["forward"] = fwd
if "generate" in parts:
    gen = {}
    for b in [1, 8]:
        x = torch.tensor([[100 + i * 31 + j * 7 for j in range(32)] for i in range(b)])
        with torch.no_grad():
            s = timed(2, lambda: model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64, min_new_tokens=64,
                                                do_sample=False, pad_token_id=0))
        gen[f"b{b}_tokens_s"] = b * 64 / s
    out["generate"] = gen
if "train" in parts:
    model.train()
    b, t = train_b, train_t
    x = ids(b, t)

    def step():
        logits = model(input_ids=x).logits
        loss = -torch.log_softmax(logits.float(), -1).gather(-1, x.unsqueeze(-1)).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    s = timed(2, step)
    out["train_step"] = {"shape": f"{b}x{t}", "seconds": s, "tokens_s": b * t / s}
# VmHWM is this process's own peak (ru_maxrss is inherited across exec on Linux).
out["peak_rss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
