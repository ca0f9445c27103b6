#!/usr/bin/env python3
"""A DeepSeek-V3 checkpoint in the FP8 block format of the real DeepSeek-V3/R1 weights, and its
dequantization, recorded with PyTorch.

Not needed by CI: the fixture it writes is committed. Install as for moe_models.py (same venv):
    ~/.cache/distill/venv-torch/bin/pip install torch transformers safetensors numpy
    ~/.cache/distill/venv-torch/bin/pip install accelerate   # only for `check`, transformers' FP8 loader

    fp8_dequant.py make FIXTURES    # FIXTURES/tiny-deepseek-v3-a -> FIXTURES/tiny-deepseek-v3-fp8
    fp8_dequant.py check FIXTURES   # our dequantization vs transformers' own FP8 loader (CPU)

The format (DeepSeek-V3's config.json and model.safetensors): every Linear weight of attention
(q_a_proj, q_b_proj / q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj) and of the MLPs (dense, routed
experts, shared experts: gate_proj, up_proj, down_proj) is stored as `float8_e4m3fn` (safetensors
dtype "F8_E4M3"), next to `<module>.weight_scale_inv`, float32 [ceil(out/B), ceil(in/B)];
    W[i, j] = float(fp8[i, j]) * weight_scale_inv[i // B, j // B]
(DeepSeek's inference/kernel.py `weight_dequant`; the last block row / column is partial when a
dimension is not a multiple of B). Everything else keeps its dtype: embed_tokens, lm_head, the
norms, the router `mlp.gate.weight` and `mlp.gate.e_score_correction_bias` (float32 here, as the
whole tiny model; the real checkpoints keep bf16 there, and f32 for the bias). config.json gains
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [16, 16]}
(the real ones use [128, 128]; 16 gives the tiny model several blocks per weight, and partial blocks
in the three weights with a 24-wide dimension: q_a_proj [24, 64], q_b_proj [96, 24],
kv_a_proj_with_mqa [24, 64], as kv_a_proj_with_mqa [576, 7168] has in the real model with B=128).

Quantization per block, as DeepSeek's act_quant: s = amax(|block|) / 448, q = fp8(x / s), stored
scale_inv = s (the clamp to ±448 never binds; an all-zero block would get s = 1).

Files (tiny-deepseek-v3-fp8/):
  config.json, generation_config.json, model.safetensors   the FP8 checkpoint
  dequant.safetensors     every tensor of the checkpoint in float32 under the HF names
                          (per-expert layout): fp8 weights dequantized as above, the rest copied
  reference.safetensors   as moe_models.py's (same ids; logits, docs, greedy, router) for the
                          model with the dequantized weights, in float32, eager attention/experts;
                          one difference: greedy is the plain argmax over the whole vocabulary and
                          greedy_scores are raw logits (moe_models.py's come from generate with
                          min_new_tokens, which puts eos at -inf; no eos stop in either). Here eos
                          (2) is the argmax at step 21, so the two rules give other tokens.

Cross-checks (recorded with transformers 5.24.0, llama.cpp 11434):
  * transformers' own loader (`check`): without a GPU, FineGrainedFP8HfQuantizer sets
    dequantize=True and Fp8Dequantize dequantizes on load (CPU). It derives the block from the scale
    grid (block_m = rows // scale_rows), so it is exact for the weights whose dimensions are
    multiples of 16 and wrong for the three with a 24-wide dimension (taken as blocks of 12: up to
    0.19 off, logits 2.2 off); where rows % scale_rows != 0 (as for the real kv_a_proj_with_mqa,
    576 rows, 5 scale rows) it raises "not divisible by scale grid". Our dequantization follows
    DeepSeek's kernel and the config's block size instead.
  * llama.cpp's convert_hf_to_gguf.py (see moe_gguf.py; its `dequant_simple` for quant_method
    "fp8") turns this directory into a GGUF whose f32 tensors equal dequant.safetensors bit for bit.
"""
import json
import os
import re
import shutil
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import moe_models as mm  # noqa: E402

BLOCK = 16
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
QUANTIZATION = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [BLOCK, BLOCK]}
QUANTIZED = re.compile(r"model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
                       r"|mlp\.((experts\.\d+|shared_experts)\.)?(gate_proj|up_proj|down_proj))\.weight")


def expand(scale, shape, block=BLOCK):
    """[ceil(R/B), ceil(C/B)] block scales -> [R, C]."""
    return scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[: shape[0], : shape[1]]


def quantize(w, block=BLOCK):
    """float32 [R, C] -> (float8_e4m3fn [R, C], float32 scale_inv [ceil(R/B), ceil(C/B)])."""
    r, c = w.shape
    nr, nc = -(-r // block), -(-c // block)
    padded = torch.zeros(nr * block, nc * block, dtype=torch.float32)
    padded[:r, :c] = w
    amax = padded.reshape(nr, block, nc, block).abs().amax(dim=(1, 3))
    s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (w / expand(s, w.shape, block)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, s.to(torch.float32).contiguous()


def dequantize(q, s, block=BLOCK):
    return q.to(torch.float32) * expand(s, q.shape, block)


def greedy(model, prompt):
    """32 greedy tokens after the prompt, as the plain argmax over the whole vocabulary, decoded
    with the KV cache (the model called token by token with its cache), and checked against
    a cache-free recomputation. Unlike moe_models.greedy (generate with min_new_tokens, which puts
    eos at -inf) eos may be chosen: here it is the argmax at step 21. greedy_scores: raw logits."""
    tokens, scores, past, x = [], [], None, prompt
    with torch.no_grad():
        for _ in range(mm.NEW_TOKENS):
            out = model(input_ids=x, cache=past, use_cache=True)
            past, lg = out.cache, out.logits[:, -1].float()
            x = lg.argmax(-1, keepdim=True)
            tokens.append(x)
            scores.append(lg)
    tokens, scores = torch.cat(tokens, 1), torch.cat(scores)
    seq = prompt
    for _ in range(mm.NEW_TOKENS):
        seq = torch.cat([seq, mm.logits(model, seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(seq[:, prompt.shape[1]:], tokens), "cached decoding disagrees with no-cache argmax"
    top2 = scores.topk(2, -1)[0]
    return tokens.contiguous(), scores.contiguous(), float((top2[:, 0] - top2[:, 1]).min())


def make(fixtures):
    src, d = os.path.join(fixtures, "tiny-deepseek-v3-a"), os.path.join(fixtures, "tiny-deepseek-v3-fp8")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = QUANTIZATION
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    shutil.copy(os.path.join(src, "generation_config.json"), d)

    weights = load_file(os.path.join(src, "model.safetensors"))
    fp8, deq = {}, {}
    for name, w in weights.items():
        if QUANTIZED.fullmatch(name):
            q, s = quantize(w)
            fp8[name], fp8[name[: -len("weight")] + "weight_scale_inv"] = q, s
            deq[name] = dequantize(q, s)
        else:
            fp8[name] = w
            deq[name] = w.clone()
    save_file(fp8, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    save_file(deq, os.path.join(d, "dequant.safetensors"), metadata=mm.versions())
    n_q = sum(1 for n in weights if QUANTIZED.fullmatch(n))
    print(f"{n_q} of {len(weights)} tensors in FP8, block {BLOCK}; partial blocks in",
          sorted({re.sub(r"\.\d+\.", ".N.", n) for n in weights if QUANTIZED.fullmatch(n) and any(x % BLOCK for x in weights[n].shape)}))

    # the model with the dequantized weights, recorded as moe_models.make records its fixtures
    with tempfile.TemporaryDirectory() as tmp:
        plain = dict(cfg)
        del plain["quantization_config"]
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(plain, f)
        shutil.copy(os.path.join(src, "generation_config.json"), tmp)
        save_file(deq, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        model = mm.AutoModelForCausalLM.from_pretrained(tmp, **mm.LOAD).eval()
    got = mm.split_experts(model.state_dict())
    assert all(torch.equal(got[n], deq[n]) for n in deq if n in got), "the loaded model holds other weights"
    g = torch.Generator().manual_seed(1234)
    ids_batch = torch.randint(3, mm.VOCAB, (2, 9), generator=g)
    ids_docs = torch.randint(3, mm.VOCAB, (3, 5), generator=g)
    ids_prompt = torch.randint(3, mm.VOCAB, (1, 5), generator=g)
    router = mm.routed(model, ids_batch)
    tokens, scores, gen_margin = greedy(model, ids_prompt)
    meta = dict(mm.versions(), weights="dequant.safetensors (FP8 block %d dequantized to float32)" % BLOCK,
                router_rows="batch-major (b*9+t) over ids_batch; indices sorted ascending",
                generation=f"greedy, {mm.NEW_TOKENS} new tokens, KV cache, plain argmax (eos allowed, no stop), raw logits")
    logits_batch = mm.logits(model, ids_batch).contiguous()
    save_file({
        "ids_batch": ids_batch.to(torch.int64), "logits_batch": logits_batch,
        "ids_docs": ids_docs.to(torch.int64),
        "logits_docs": torch.cat([mm.logits(model, ids_docs[j:j + 1]) for j in range(3)]).contiguous(),
        "ids_prompt": ids_prompt.to(torch.int64), "greedy": tokens.to(torch.int64), "greedy_scores": scores,
        **router,
    }, os.path.join(d, "reference.safetensors"), metadata=meta)
    inputs = [ids_batch] + [ids_docs[j:j + 1] for j in range(3)] + [torch.cat([ids_prompt, tokens], 1)]
    margin = min(mm.routing_margin(model, mm.routed(model, x)) for x in inputs)
    orig = load_file(os.path.join(src, "reference.safetensors"))
    print(json.dumps({
        "fixture": d, "weight_max_abs_err_vs_f32": max(float((deq[n] - weights[n]).abs().max()) for n in weights),
        "logits_max_abs_diff_vs_tiny-deepseek-v3-a": float((logits_batch - orig["logits_batch"]).abs().max()),
        "same_greedy_as_tiny-deepseek-v3-a": bool(torch.equal(tokens, orig["greedy"])),
        "min_routing_margin": margin, "greedy_margin": gen_margin}))


def check(fixtures):
    """Load the FP8 directory with transformers (no GPU: FineGrainedFP8HfQuantizer sets
    dequantize=True; needs accelerate) and compare its weights and logits with ours."""
    d = os.path.join(fixtures, "tiny-deepseek-v3-fp8")
    deq = load_file(os.path.join(d, "dequant.safetensors"))
    ref = load_file(os.path.join(d, "reference.safetensors"))
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        dtypes = {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}
    print("safetensors dtypes:", sorted(set(dtypes.values())))
    model = mm.AutoModelForCausalLM.from_pretrained(d, **mm.LOAD).eval()
    got = mm.split_experts({n: t.float() for n, t in model.state_dict().items()})
    wrong = {n: float((got[n] - deq[n]).abs().max()) for n in deq if n in got and not torch.equal(got[n], deq[n])}
    print(json.dumps({
        "transformers": mm.versions()["transformers"],
        "dtypes_in_model": sorted({str(t.dtype) for t in model.state_dict().values()}),
        "weights_differing_from_dequant": {re.sub(r"\.\d+\.", ".N.", n): v for n, v in sorted(wrong.items())},
        "logits_max_abs_diff": float((mm.logits(model, ref["ids_batch"]) - ref["logits_batch"]).abs().max())}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
