#!/usr/bin/env python3
"""One SFT step, recorded with transformers + torch AdamW, for the Rust trainer's reference test.

    train_step.py models/tests/fixtures   # reads tiny-{llama,qwen2}/, writes train-step.json and
                                           # train-step-weights.safetensors into each

The batch packs three documents into one row. Each document has prompt tokens (no loss) and
assistant tokens (loss). torch runs each document on its own, which is what a block-diagonal mask
with restarting positions must reproduce. The loss is the token mean of the cross-entropy over all
assistant tokens of the batch (TRL's). Two optimizer steps on the same batch with AdamW (decoupled
weight decay, no decay on norms and biases), linear warmup then cosine to a min-lr ratio
(transformers' cosine_with_min_lr), and global-norm clipping (clip_grad_norm_).
Recorded: the loss and per-tensor gradient norms of each step, the global norm before clipping,
the gradient norms after clipping, the raw gradients, and the weights after step 2.
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

HP = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, warmup=2, total=10, min_lr_rate=0.1, max_grad_norm=0.5)
DOCS = [  # (token ids, is-assistant mask)
    ([5, 17, 42, 8, 77, 3, 19, 2], [0, 0, 0, 1, 1, 1, 1, 1]),
    ([9, 10, 11, 12, 13, 2], [0, 0, 1, 1, 1, 1]),
    ([60, 61, 62, 63, 64, 65, 66, 67, 68, 2], [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]),
]


def lr_lambda(step):
    w, t, m = HP["warmup"], HP["total"], HP["min_lr_rate"]
    if step < w:
        return step / max(1, w)
    progress = (step - w) / max(1, t - w)
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor * (1.0 - m) + m


def loss_fn(model):
    total = sum(sum(m[1:]) for _, m in DOCS)
    loss = 0.0
    for ids, mask in DOCS:
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1)
        tgt = x[0, 1:]
        m = torch.tensor(mask[1:], dtype=torch.bool)
        loss = loss + (-lp[torch.arange(len(tgt)), tgt][m]).sum()
    return loss / total


def run(d):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("norm.weight") or n.endswith(".bias"))]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("norm.weight") or n.endswith(".bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": HP["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=HP["lr"], betas=HP["betas"], eps=HP["eps"], foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    out = {"hyperparameters": HP, "docs": DOCS, "steps": []}
    grads = {}
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        norms = {n: float(p.grad.norm()) for n, p in model.named_parameters()}
        grads.update({f"grad{step}.{n}": p.grad.detach().clone().contiguous() for n, p in model.named_parameters()})
        total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), HP["max_grad_norm"]))
        clipped = {n: float(p.grad.norm()) for n, p in model.named_parameters()}
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        out["steps"].append({"loss": float(loss), "lr": lr, "grad_norms": norms, "global_norm": total, "clipped_grad_norms": clipped})
    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    tensors.update(grads)  # the raw (unclipped) gradients of both steps, to tell noise from signal
    save_file(tensors, os.path.join(d, "train-step-weights.safetensors"))
    with open(os.path.join(d, "train-step.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(d, "loss", out["steps"][0]["loss"], "global norm", out["steps"][0]["global_norm"])


for name in ["tiny-llama", "tiny-qwen2"]:
    run(os.path.join(sys.argv[1], name))
