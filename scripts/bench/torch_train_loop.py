#!/usr/bin/env python3
"""The PyTorch training loop `scripts/bench-train` sets beside `distill train`: transformers'
model, AdamW, gradient clipping, the same shapes and step count; prints one JSON line.

    torch_train_loop.py MODEL_DIR BATCHxSEQ STEPS [LR] [WEIGHT_DECAY] [MAX_GRAD_NORM]

What a user's plain loop does: `model(input_ids, labels=…)` (transformers' shifted token-mean
cross-entropy over the whole logits), `clip_grad_norm_`, `AdamW.step()` (torch's default foreach
implementation), `zero_grad(set_to_none=True)`. f32, SDPA attention, torch's default threads.
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

model_dir, shape, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-5
wd = float(sys.argv[5]) if len(sys.argv) > 5 else 0.01
clip = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
b, t = (int(x) for x in shape.split("x"))
torch.manual_seed(0)

model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.95), eps=1e-8)
vocab = model.config.vocab_size


def batch(i):
    g = torch.Generator().manual_seed(i)
    return torch.randint(0, vocab, (b, t), generator=g)


times, losses = [], []
for i in range(steps):
    x = batch(i)
    t0 = time.perf_counter()
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
    losses.append(loss.item())
    print(f"step {i + 1}/{steps}: {times[-1]:.2f} s, loss {losses[-1]:.4f}, norm {norm.item():.3f}", file=sys.stderr)

rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "shape": shape, "steps": steps,
                  "step_s": times, "losses": losses, "peak_rss_mb": rss}))
