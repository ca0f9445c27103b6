#!/usr/bin/env python3
"""Reference fixtures for the Mixture-of-Experts students, recorded with transformers + torch.

Not needed by CI: the fixtures it writes are committed. Install by hand (PyPI only; the default
torch wheel pulls the CUDA packages, which is large but harmless on a CPU-only machine):
    python3 -m venv ~/.cache/distill/venv-torch
    ~/.cache/distill/venv-torch/bin/pip install torch transformers safetensors numpy

    moe_models.py make OUT_DIR         # writes OUT_DIR/tiny-{qwen3moe-a,qwen3moe-b,deepseek-v3-a,
                                       #   deepseek-v3-b,deepseek-v2,deepseek-v2-group}/
    moe_models.py train-step OUT_DIR   # one SFT reference (train_step.py's recipe) for
                                       #   tiny-qwen3moe-a and tiny-deepseek-v3-a
    moe_models.py check DIR            # reloads a fixture in transformers, compares with its reference

Recorded with transformers 5.x (the `rope_parameters` config format, fused 3-D expert tensors in
memory that `save_pretrained` writes back in the original per-expert layout
`mlp.experts.{e}.{gate,up,down}_proj.weight`). Each tiny model has random weights (seeded, the
`randomize` of tiny_models.py, plus a random `e_score_correction_bias` for DeepSeek-V3) and a config
that exercises its architecture's switches:
  tiny-qwen3moe-a     Qwen3-MoE, layer 0 dense (mlp_only_layers), top-2 of 8, norm_topk_prob
  tiny-qwen3moe-b     Qwen3-MoE, decoder_sparse_step 2 (only layer 1 sparse), top-3, no renormalisation
  tiny-deepseek-v3-a  MLA with q LoRA, YaRN (mscale_all_dim), sigmoid + bias, 4 groups pick 2,
                      norm_topk_prob, routed_scaling_factor 2.5, one shared expert, layer 0 dense
  tiny-deepseek-v3-b  MLA without q LoRA (q_proj), default rope, one group, no renormalisation,
                      two shared experts, all layers sparse
  tiny-deepseek-v2    DeepSeek-V2 (softmax scoring, topk_method greedy), q_proj, layer 0 dense
  tiny-deepseek-v2-group  DeepSeek-V2 with group_limited_greedy (group score = max), YaRN with
                      mscale != mscale_all_dim (attention_factor != 1), routed_scaling_factor 2.0
All attention is eager and all experts eager (experts_implementation="eager"), in float32.
`reference.safetensors` holds (metadata: torch and transformers versions):
  ids_batch [2, 9] + logits_batch [2, 9, V]    two independent rows, default positions
  ids_docs  [3, 5] + logits_docs [3, 5, V]     three documents run one by one
  ids_prompt [1, 5] + greedy [1, 32]           32 greedy tokens after the prompt (generate with
                                               do_sample=False, use_cache=True, no eos stop);
                                               greedy_scores [32, V] are the logits that chose them
  router.{L}.logits [18, E]   router logits of MoE layer L for ids_batch (rows: batch-major b*9+t)
  router.{L}.indices [18, k]  chosen experts, sorted ascending per row (int64)
  router.{L}.weights [18, k]  their routing weights (after renormalisation / routed_scaling_factor)
"""
import copy
import json
import math
import os
import re
import sys

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM, DeepseekV2Config, DeepseekV3Config, GenerationConfig, Qwen3MoeConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_models import VOCAB, randomize, logits  # noqa: E402  (same seeded init and forward)

LOAD = dict(dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
NEW_TOKENS = 32


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def configs():
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                  num_attention_heads=4, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  tie_word_embeddings=False)
    qwen = dict(common, num_key_value_heads=2, head_dim=16, max_position_embeddings=512, num_experts=8,
                moe_intermediate_size=32, attention_bias=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    mla = dict(common, num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
               v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
               max_position_embeddings=256)
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    return {
        "tiny-qwen3moe-a": Qwen3MoeConfig(**qwen, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
                                          mlp_only_layers=[0]),
        "tiny-qwen3moe-b": Qwen3MoeConfig(**qwen, num_experts_per_tok=3, norm_topk_prob=False, decoder_sparse_step=2,
                                          mlp_only_layers=[]),
        "tiny-deepseek-v3-a": DeepseekV3Config(**mla, q_lora_rank=24, n_shared_experts=1, first_k_dense_replace=1,
                                               n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
                                               rope_parameters=dict(yarn), num_mtp_layers=0),
        "tiny-deepseek-v3-b": DeepseekV3Config(**mla, q_lora_rank=None, n_shared_experts=2, first_k_dense_replace=0,
                                               n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0,
                                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                               num_mtp_layers=0),
        "tiny-deepseek-v2": DeepseekV2Config(**mla, q_lora_rank=None, n_shared_experts=2, first_k_dense_replace=1,
                                             topk_method="greedy", routed_scaling_factor=1.0,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "tiny-deepseek-v2-group": DeepseekV2Config(**mla, q_lora_rank=None, n_shared_experts=1, first_k_dense_replace=0,
                                                   topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                                   routed_scaling_factor=2.0,
                                                   rope_parameters=dict(yarn, mscale=1.0, mscale_all_dim=0.8)),
    }


def randomize_moe(model, seed):
    randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # a persistent buffer, not a parameter
                b.copy_(0.2 * torch.randn(b.shape, generator=g))


def gates(model):
    """(layer index, router module) of every MoE layer."""
    return [(i, layer.mlp.gate) for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")]


def routed(model, ids):
    """Router logits / chosen experts / weights of each MoE layer for one forward of ids."""
    seen, hooks = {}, []
    for i, gate in gates(model):
        hooks.append(gate.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)))
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    out = {}
    for i, (lg, w, idx) in sorted(seen.items()):
        order = idx.argsort(dim=-1)
        out[f"router.{i}.logits"] = lg.float().contiguous()
        out[f"router.{i}.indices"] = idx.gather(1, order).to(torch.int64).contiguous()
        out[f"router.{i}.weights"] = w.gather(1, order).float().contiguous()
    return out


def routing_margin(model, router):
    """Smallest gap between a chosen and a rejected candidate (expert, or group) over all tokens and
    layers: how far the fixture is from a tie that float error could flip."""
    cfg, worst = model.config, math.inf
    for i, gate in gates(model):
        lg = router[f"router.{i}.logits"]
        k, e = gate.top_k, gate.num_experts
        if cfg.model_type == "qwen3_moe":
            s = lg.softmax(-1)
        elif cfg.model_type == "deepseek_v3":
            s = lg.sigmoid() + gate.e_score_correction_bias
            gs = s.view(-1, gate.num_group, e // gate.num_group).topk(2, -1)[0].sum(-1)
            if gate.topk_group < gate.num_group:
                top = gs.sort(-1, descending=True)[0]
                worst = min(worst, float((top[:, gate.topk_group - 1] - top[:, gate.topk_group]).min()))
            keep = torch.zeros_like(gs).scatter_(1, gs.topk(gate.topk_group, -1)[1], 1).bool()
            s = s.masked_fill(~keep.repeat_interleave(e // gate.num_group, 1), -math.inf)
        else:
            s = lg.softmax(-1)
            if gate.topk_method == "group_limited_greedy":
                gs = s.view(-1, gate.num_group, e // gate.num_group).max(-1).values
                top = gs.sort(-1, descending=True)[0]
                worst = min(worst, float((top[:, gate.topk_group - 1] - top[:, gate.topk_group]).min()))
                keep = torch.zeros_like(gs).scatter_(1, gs.topk(gate.topk_group, -1)[1], 1).bool()
                s = s.masked_fill(~keep.repeat_interleave(e // gate.num_group, 1), 0.0)
        top = s.sort(-1, descending=True)[0]
        worst = min(worst, float((top[:, k - 1] - top[:, k]).min()))
    return worst


def greedy(model, prompt):
    gc = GenerationConfig(**{k: v for k, v in model.generation_config.to_dict().items() if not k.startswith("_")
                             and k != "transformers_version"})
    gc.update(eos_token_id=None, pad_token_id=0,  # no eos: always NEW_TOKENS tokens
              max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True,
              output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = model.generate(prompt, generation_config=gc)
    tokens = out.sequences[:, prompt.shape[1]:]
    scores = torch.cat(out.scores).float()
    # the same tokens from full recomputation without cache (argmax of the last position)
    seq = prompt
    for _ in range(NEW_TOKENS):
        seq = torch.cat([seq, logits(model, seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(seq[:, prompt.shape[1]:], tokens), "cached generate disagrees with no-cache argmax"
    top2 = scores.topk(2, -1)[0]
    return tokens.contiguous(), scores.contiguous(), float((top2[:, 0] - top2[:, 1]).min())


def split_experts(tensors):
    """transformers' in-memory fused experts -> the checkpoint's per-expert tensors (what
    save_pretrained writes): gate_up_proj [E, 2I, H] = cat(gate [I, H], up [I, H]); down_proj [E, H, I]."""
    out = {}
    for n, t in tensors.items():
        m = re.fullmatch(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)", n)
        if not m:
            out[n] = t
            continue
        for e in range(t.shape[0]):
            if m.group(2) == "down_proj":
                out[f"{m.group(1)}.{e}.down_proj.weight"] = t[e].contiguous()
            else:
                i = t.shape[1] // 2
                out[f"{m.group(1)}.{e}.gate_proj.weight"] = t[e, :i].contiguous()
                out[f"{m.group(1)}.{e}.up_proj.weight"] = t[e, i:].contiguous()
    return out


def make(out):
    print(json.dumps(versions()))
    g = torch.Generator().manual_seed(1234)
    ids_batch = torch.randint(3, VOCAB, (2, 9), generator=g)
    ids_docs = torch.randint(3, VOCAB, (3, 5), generator=g)
    ids_prompt = torch.randint(3, VOCAB, (1, 5), generator=g)
    for i, (name, cfg) in enumerate(configs().items()):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        model = AutoModelForCausalLM.from_config(cfg, **LOAD).eval()
        randomize_moe(model, 200 + i)
        model.save_pretrained(d, safe_serialization=True)
        # the file holds the original per-expert layout, equal to our own split of the fused weights
        want = split_experts(model.state_dict())
        with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
            saved = {k: f.get_tensor(k) for k in f.keys()}
        assert set(saved) == set(want), (set(saved) ^ set(want))
        assert all(torch.equal(saved[k], want[k]) for k in saved)
        router = routed(model, ids_batch)
        tokens, scores, gen_margin = greedy(model, ids_prompt)
        meta = dict(versions(), router_rows="batch-major (b*9+t) over ids_batch; indices sorted ascending",
                    generation=f"greedy, {NEW_TOKENS} new tokens, use_cache=True, eos disabled")
        save_file({
            "ids_batch": ids_batch.to(torch.int64), "logits_batch": logits(model, ids_batch).contiguous(),
            "ids_docs": ids_docs.to(torch.int64),
            "logits_docs": torch.cat([logits(model, ids_docs[j:j + 1]) for j in range(3)]).contiguous(),
            "ids_prompt": ids_prompt.to(torch.int64), "greedy": tokens.to(torch.int64), "greedy_scores": scores,
            **router,
        }, os.path.join(d, "reference.safetensors"), metadata=meta)
        # how far each recorded input is from a routing tie (batch, docs, prompt + greedy, train docs)
        inputs = [ids_batch] + [ids_docs[j:j + 1] for j in range(3)] + [torch.cat([ids_prompt, tokens], 1)]
        inputs += [torch.tensor([ids]) for ids, _ in DOCS]
        margin = min(routing_margin(model, routed(model, x)) for x in inputs)
        print(name, sum(p.numel() for p in model.parameters()), "params ->", d,
              "| min routing margin %.2e | greedy top1-top2 margin %.2e" % (margin, gen_margin))
        check(d)


def check(d):
    ref = load_file(os.path.join(d, "reference.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(d, **LOAD).eval()
    err = {"batch": float((logits(model, ref["ids_batch"]) - ref["logits_batch"]).abs().max()),
           "docs": float(max((logits(model, ref["ids_docs"][j:j + 1]) - ref["logits_docs"][j:j + 1]).abs().max()
                             for j in range(3)))}
    router = routed(model, ref["ids_batch"])
    same_routes = all(torch.equal(router[k], ref[k]) for k in router if k.endswith("indices"))
    tokens, _, _ = greedy(model, ref["ids_prompt"])
    print(json.dumps({"fixture": d, "max_abs_err": err, "same_routes": same_routes,
                      "same_greedy": bool(torch.equal(tokens, ref["greedy"]))}))
    assert max(err.values()) < 1e-5 and same_routes and torch.equal(tokens, ref["greedy"])


# ---- one SFT step: train_step.py's recipe, unchanged (loss, AdamW groups, schedule, clipping) ----
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


def train_step(d):
    """As train_step.py's run(), with tensor names in the checkpoint's per-expert layout. Note: the
    fused expert parameters give experts that no token chose a zero gradient (not None), so AdamW
    still applies weight decay to them; `experts_hit` in the json lists which experts had tokens."""
    model = AutoModelForCausalLM.from_pretrained(d, **LOAD).train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("norm.weight") or n.endswith(".bias"))]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("norm.weight") or n.endswith(".bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": HP["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=HP["lr"], betas=HP["betas"], eps=HP["eps"], foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    out = {"hyperparameters": HP, "docs": DOCS, "steps": [], "versions": versions()}
    hit = {}
    for i, gate in gates(model):
        gate.register_forward_hook(lambda m, a, o, i=i: hit.setdefault(i, set()).update(o[2].flatten().tolist()))
    grads = {}
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        g = split_experts({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        norms = {n: float(t.norm()) for n, t in g.items()}
        grads.update({f"grad{step}.{n}": t.contiguous() for n, t in g.items()})
        total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), HP["max_grad_norm"]))
        clipped = {n: float(t.norm()) for n, t in split_experts({n: p.grad for n, p in model.named_parameters()}).items()}
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        out["steps"].append({"loss": float(loss), "lr": lr, "grad_norms": norms, "global_norm": total, "clipped_grad_norms": clipped})
    out["experts_hit"] = {str(i): sorted(s) for i, s in sorted(hit.items())}
    tensors = split_experts({n: p.detach() for n, p in model.named_parameters()})
    tensors = {n: t.contiguous() for n, t in tensors.items()}
    tensors.update(grads)  # the raw (unclipped) gradients of both steps, to tell noise from signal
    save_file(tensors, os.path.join(d, "train-step-weights.safetensors"), metadata=versions())
    with open(os.path.join(d, "train-step.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(d, "loss", out["steps"][0]["loss"], "global norm", out["steps"][0]["global_norm"], "experts hit", out["experts_hit"])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "train-step":
        for name in ["tiny-qwen3moe-a", "tiny-deepseek-v3-a"]:
            train_step(os.path.join(sys.argv[2], name))
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
