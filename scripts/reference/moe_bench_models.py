#!/usr/bin/env python3
"""Random Mixture-of-Experts checkpoints of a real-ish width for `distill bench model` (not
committed: made on demand, ~100 MB each).

    ~/.cache/distill/venv-torch/bin/python scripts/reference/moe_bench_models.py OUT_DIR

writes OUT_DIR/qwen3moe-d512 (8 experts, top-2, 8 layers) and OUT_DIR/deepseek-v3-d512 (MLA +
8 routed experts, top-2, 1 shared, first layer dense). Then, for each:

    distill bench model --model OUT_DIR/NAME --only generate --python ~/.cache/distill/venv-torch/bin/python
"""
import os
import sys

import torch
from transformers import DeepseekV3Config, Qwen3MoeConfig, AutoModelForCausalLM

out = sys.argv[1]
common = dict(vocab_size=49152, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
              max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
              tie_word_embeddings=False)
configs = {
    "qwen3moe-d512": Qwen3MoeConfig(**common, num_key_value_heads=4, head_dim=64, intermediate_size=1536,
                                    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=1024,
                                    norm_topk_prob=True, rope_theta=1e6),
    "deepseek-v3-d512": DeepseekV3Config(**common, num_key_value_heads=8, intermediate_size=1536,
                                         q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=64,
                                         qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=8,
                                         num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=1024,
                                         first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True,
                                         routed_scaling_factor=2.5, num_nextn_predict_layers=0),
}
torch.manual_seed(0)
for name, cfg in configs.items():
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.normal_(0.0, 0.02) if not n.endswith("norm.weight") else p.fill_(1.0)
    d = os.path.join(out, name)
    model.save_pretrained(d, safe_serialization=True)
    print(d, sum(p.numel() for p in model.parameters()) / 1e6, "M parameters")
