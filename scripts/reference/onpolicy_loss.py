#!/usr/bin/env python3
"""On-policy distillation losses and their gradients, recorded with transformers + torch.

    onpolicy_loss.py models/tests/fixtures   # reads tiny-{llama,qwen2}/, writes onpolicy-loss.json

Two student samples (prompt ids, then the completion the student "sampled") go through the tiny
model. A synthetic teacher (fixed random logits per position, seeded) gives, at each completion
position, its log-prob of the sampled token and its top-k (k = 4; one position has only three
alternatives, padded). Recorded for each loss: the value (mean over scored positions), the
per-tensor gradient norms and the global norm.

- reverse_kl: the sampled-token estimator. A = log q(x) - log p(x) per position, held constant;
  the objective is mean(A * (log q(x) - log q(x).detach()) + A): value = mean A, gradient =
  mean(A * grad log q(x)).
- gkd_beta{0,0.5,1}: TRL's generalized_jsd_loss (beta 0 = KL(P||Q), 1 = KL(Q||P)), computed over
  the teacher's top-k with both distributions renormalised there; padded entries carry no mass.
"""
import json
import math
import os
import sys

import torch
from transformers import AutoModelForCausalLM

K = 4
SAMPLES = [  # (prompt ids, completion ids)
    ([5, 17, 42, 8], [77, 3, 19, 2]),
    ([9, 10, 11], [12, 13, 60, 61, 2]),
]
PAD_AT = (1, 2)  # (sample, completion position) whose top-k has only K - 1 entries


def teacher(vocab):
    """Per sample: for each completion token, (log p(token), top ids, top log-probs)."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for s, (prompt, comp) in enumerate(SAMPLES):
        rows = []
        for j, tok in enumerate(comp):
            logits = torch.randn(vocab, generator=g, dtype=torch.float64) * 3.0
            logits[tok] += 2.0  # the sampled token is often, not always, in the top-k
            lp = torch.log_softmax(logits, -1)
            top = torch.topk(lp, K)
            ids = [int(i) for i in top.indices]
            lps = [float(v) for v in top.values]
            if (s, j) == PAD_AT:
                ids[-1], lps[-1] = None, None
            rows.append((float(lp[tok]), ids, lps))
        out.append(rows)
    return out


def student_logprobs(model):
    """Per sample: [n_completion, vocab] log-softmax at the positions predicting the completion."""
    out = []
    for prompt, comp in SAMPLES:
        ids = torch.tensor([prompt + comp])
        logits = model(input_ids=ids).logits[0].float()
        out.append(torch.log_softmax(logits[len(prompt) - 1:-1], -1))
    return out


def reverse_kl(model, scores):
    terms = []
    for lsm, (prompt, comp), rows in zip(student_logprobs(model), SAMPLES, scores):
        tgt = torch.tensor(comp)
        log_q = lsm[torch.arange(len(comp)), tgt]
        log_p = torch.tensor([r[0] for r in rows], dtype=torch.float32)
        a = (log_q.detach() - log_p)
        terms.append(a * (log_q - log_q.detach()) + a)
    return torch.cat(terms).mean()


def gkd(model, scores, beta):
    terms = []
    for lsm, rows in zip(student_logprobs(model), scores):
        for j, (_, ids, lps) in enumerate(rows):
            valid = [i for i, x in enumerate(ids) if x is not None]
            idx = torch.tensor([ids[i] for i in valid])
            log_q = torch.log_softmax(lsm[j, idx], -1)  # student renormalised over the top-k
            log_p = torch.log_softmax(torch.tensor([lps[i] for i in valid], dtype=torch.float32), -1)
            if beta == 0:
                jsd = (log_p.exp() * (log_p - log_q)).sum()
            elif beta == 1:
                jsd = (log_q.exp() * (log_q - log_p)).sum()
            else:
                b = torch.tensor(beta)
                log_m = torch.logsumexp(torch.stack([log_q + torch.log(1 - b), log_p + torch.log(b)]), 0)
                jsd = beta * (log_p.exp() * (log_p - log_m)).sum() + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum()
            terms.append(jsd)
    return torch.stack(terms).mean()


def run(d):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").train()
    scores = teacher(model.config.vocab_size)
    out = {"k": K, "samples": SAMPLES, "teacher": scores, "losses": {}}
    for name, fn in [("reverse_kl", lambda m: reverse_kl(m, scores)),
                     ("gkd_beta0", lambda m: gkd(m, scores, 0.0)),
                     ("gkd_beta0.5", lambda m: gkd(m, scores, 0.5)),
                     ("gkd_beta1", lambda m: gkd(m, scores, 1.0))]:
        model.zero_grad(set_to_none=True)
        loss = fn(model)
        loss.backward()
        norms = {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}
        total = math.sqrt(sum(v * v for v in norms.values()))
        out["losses"][name] = {"loss": float(loss), "grad_norms": norms, "global_norm": total}
        print(d, name, "loss", float(loss), "global norm", total)
    with open(os.path.join(d, "onpolicy-loss.json"), "w") as f:
        json.dump(out, f, indent=1)


for name in ["tiny-llama", "tiny-qwen2"]:
    run(os.path.join(sys.argv[1], name))
