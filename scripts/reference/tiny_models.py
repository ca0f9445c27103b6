#!/usr/bin/env python3
"""Reference fixtures for the student models, recorded with transformers + torch.

Not needed by CI: the fixtures it writes are committed. Install by hand:
    python3 -m venv ~/.cache/distill/pyref && ~/.cache/distill/pyref/bin/pip install torch transformers safetensors

    tiny_models.py make OUT_DIR          # writes OUT_DIR/tiny-{llama,qwen2,qwen3}/
    tiny_models.py check-export DIR REF  # loads a distill export in transformers, compares logits

Each tiny model has random weights (seeded) and a config that exercises its architecture's
switches: Llama with llama3 rope scaling and untied lm_head, Qwen2 with q/k/v bias and tied
embeddings, Qwen3 with q/k norm and GQA. `reference.safetensors` holds the inputs and the logits:
  ids_batch [2, 9] + logits_batch [2, 9, V]    two independent rows, default positions
  ids_docs  [3, 5] + logits_docs [3, 5, V]     three documents run one by one (for packing tests)
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

VOCAB = 96


def configs():
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "tiny-llama": LlamaConfig(**common, tie_word_embeddings=False, rope_theta=10000.0,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "tiny-qwen2": Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000000.0),
        "tiny-qwen3": Qwen3Config(**common, tie_word_embeddings=False, rope_theta=1000000.0, attention_bias=False),
    }


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def make(out):
    g = torch.Generator().manual_seed(1234)
    ids_batch = torch.randint(3, VOCAB, (2, 9), generator=g)
    ids_docs = torch.randint(3, VOCAB, (3, 5), generator=g)
    for i, (name, cfg) in enumerate(configs().items()):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
        randomize(model, 100 + i)
        model.save_pretrained(d, safe_serialization=True)
        save_file({
            "ids_batch": ids_batch.to(torch.int64), "logits_batch": logits(model, ids_batch).contiguous(),
            "ids_docs": ids_docs.to(torch.int64),
            "logits_docs": torch.cat([logits(model, ids_docs[j:j + 1]) for j in range(3)]).contiguous(),
        }, os.path.join(d, "reference.safetensors"))
        print(name, sum(p.numel() for p in model.parameters()), "params ->", d)


def check_export(export_dir, ref_dir):
    ref = load_file(os.path.join(ref_dir, "reference.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32, attn_implementation="eager").eval()
    out = {}
    for k in ("batch", "docs"):
        ids = ref[f"ids_{k}"]
        got = torch.cat([logits(model, ids[j:j + 1]) for j in range(ids.shape[0])])
        out[k] = float((got - ref[f"logits_{k}"]).abs().max())
    print(json.dumps({"export": export_dir, "max_abs_err": out}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "check-export":
        check_export(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
