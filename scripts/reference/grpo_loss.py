#!/usr/bin/env python3
"""GRPO, Dr. GRPO and DAPO losses and their gradients, as TRL's GRPOTrainer defines them, recorded
with transformers + torch for the Rust loss's reference test.

    grpo_loss.py models/tests/fixtures   # reads tiny-{llama,qwen2}/, writes grpo-loss.json

The formulas are those of trl 1.16.0 (trl/trainer/grpo_trainer.py):
- advantages (`_generate_and_score_completions`): the reward is the weighted sum of its
  components; A = r − mean(group), divided by (std(group) + 1e-4) when scale_rewards = "group"
  (std with Bessel's correction, trl's `nanstd`), not divided when "none";
- the per-token loss (`_compute_loss`, importance_sampling_level = "token"): log π of the sampled
  token from logits / temperature; coef_1 = exp(log π − log π_old) with log π_old =
  log π.detach() when there is a single iteration (μ = 1), else the log-probs recorded at
  sampling time; coef_2 = clamp(coef_1, 1 − ε_low, 1 + ε_high);
  ℓ = −min(coef_1·A, coef_2·A) + β·(exp(r − log π) − (r − log π) − 1);
- the aggregation: "grpo" the mean over sequences of each sequence's token mean; "dr_grpo" the
  token sum over (sequences × max_completion_length); "dapo" the token sum over the batch's
  completion tokens (one process, one accumulation window: num_items_in_batch).

Six completions, two prompts × G = 3, with fixed reward components. μ = 2 runs the iteration,
one torch AdamW step (lr LR, betas (0.9, 0.999), eps 1e-8, no weight decay, no clipping), and the
second iteration against the first's log-probs. The weights after that AdamW step are saved
(grpo-weights.safetensors, `CONFIG/name`): Adam moves an entry whose gradient is at float noise
by ±lr whatever the noise says, so the Rust test takes the second iteration at these weights. The reference model is synthetic: the initial
policy's log-probs plus seeded noise (so the KL term and its gradient are not zero at the start).
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

G = 3
TEMPERATURE = 0.7
MAX_COMPLETION = 6
LR = 0.02
PROMPTS = [[5, 17, 42, 8], [9, 10, 11]]
COMPLETIONS = [  # G per prompt, in order
    [77, 3, 19, 2], [77, 40, 2], [12, 13, 60, 61, 62, 2],
    [12, 13, 60, 61, 2], [30, 31], [12, 2],
]
# Reward components per completion: (accuracy, format), weighted by WEIGHTS.
COMPONENTS = [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
WEIGHTS = (1.0, 0.5)
CONFIGS = {
    # name: (loss_type, scale_rewards, beta, eps_low, eps_high)
    "grpo_beta0.04": ("grpo", "group", 0.04, 0.2, 0.2),
    "grpo_beta0": ("grpo", "group", 0.0, 0.2, 0.2),
    "dr_grpo": ("dr_grpo", "none", 0.0, 0.2, 0.2),
    "dapo": ("dapo", "group", 0.0, 0.2, 0.28),
}


def advantages(scale):
    r = torch.tensor([sum(w * c for w, c in zip(WEIGHTS, comp)) for comp in COMPONENTS], dtype=torch.float32)
    g = r.view(-1, G)
    mean = g.mean(1).repeat_interleave(G)
    std = g.std(1).repeat_interleave(G)  # Bessel, as trl's nanstd without NaNs
    a = r - mean
    if scale != "none":
        a = a / (std + 1e-4)
    return r, a


def policy_logprobs(model):
    """Per completion: [n] log π of its tokens at the sampling temperature."""
    out = []
    for s, comp in enumerate(COMPLETIONS):
        prompt = PROMPTS[s // G]
        ids = torch.tensor([prompt + comp])
        logits = model(input_ids=ids).logits[0].float() / TEMPERATURE
        lsm = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
        out.append(lsm[torch.arange(len(comp)), torch.tensor(comp)])
    return out


def loss_of(model, cfg, adv, old, ref):
    loss_type, _, beta, eps_low, eps_high = cfg
    logps = policy_logprobs(model)
    per_seq, clipped, tokens, kl_sum = [], 0, 0, 0.0
    for s, lp in enumerate(logps):
        o = lp.detach() if old is None else torch.tensor(old[s])
        coef_1 = torch.exp(lp - o)
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        a = adv[s]
        per_token = -torch.min(coef_1 * a, coef_2 * a)
        c1 = coef_1.detach()
        clipped += int((((c1 < 1 - eps_low) & (a < 0)) | ((c1 > 1 + eps_high) & (a > 0))).sum())
        tokens += len(lp)
        if beta != 0.0:
            r = torch.tensor(ref[s])
            kl = torch.exp(r - lp) - (r - lp) - 1
            kl_sum += float(kl.detach().sum())
            per_token = per_token + beta * kl
        per_seq.append(per_token)
    if loss_type == "grpo":
        loss = torch.stack([t.sum() / len(t) for t in per_seq]).mean()
    elif loss_type == "dr_grpo":
        loss = torch.cat(per_seq).sum() / (len(per_seq) * MAX_COMPLETION)
    elif loss_type == "dapo":
        loss = torch.cat(per_seq).sum() / tokens
    else:
        raise ValueError(loss_type)
    return loss, clipped / tokens, kl_sum / tokens


def norms(model):
    n = {k: float(p.grad.norm()) for k, p in model.named_parameters() if p.grad is not None}
    return n, math.sqrt(sum(v * v for v in n.values()))


def run(d):
    g = torch.Generator().manual_seed(4321)
    out = {"g": G, "temperature": TEMPERATURE, "max_completion": MAX_COMPLETION, "lr": LR,
           "prompts": PROMPTS, "completions": COMPLETIONS, "components": COMPONENTS, "weights": WEIGHTS,
           "configs": {}}
    moved = {}
    for name, cfg in CONFIGS.items():
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").train()
        rewards, adv = advantages(cfg[1])
        with torch.no_grad():
            init = [lp.tolist() for lp in policy_logprobs(model)]
        ref = [[v + 0.3 * float(torch.randn(1, generator=g)) for v in lp] for lp in init]
        rec = {"loss_type": cfg[0], "scale_rewards": cfg[1], "beta": cfg[2], "eps_low": cfg[3],
               "eps_high": cfg[4], "rewards": rewards.tolist(), "advantages": adv.tolist(),
               "old_logprobs": init, "ref_logprobs": ref, "iterations": {}}
        for mu in (1, 2):
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").train()
            opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                    foreach=False)
            its = []
            for it in range(mu):
                opt.zero_grad(set_to_none=True)
                loss, clip, kl = loss_of(model, cfg, adv, None if mu == 1 else init, ref)
                loss.backward()
                n, total = norms(model)
                its.append({"loss": float(loss), "clip_fraction": clip, "kl": kl, "grad_norms": n, "global_norm": total})
                print(os.path.basename(d), name, f"mu={mu} it={it}", "loss", float(loss), "norm", total, "clip", clip)
                opt.step()
                if mu == 2 and it == 0:
                    moved.update({f"{name}/{k}": p.detach().clone().contiguous() for k, p in model.named_parameters()})
            rec["iterations"][str(mu)] = its
        out["configs"][name] = rec
    save_file(moved, os.path.join(d, "grpo-weights.safetensors"))
    with open(os.path.join(d, "grpo-loss.json"), "w") as f:
        json.dump(out, f, indent=1)


for name in ["tiny-llama", "tiny-qwen2"]:
    run(os.path.join(sys.argv[1], name))
