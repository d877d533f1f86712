"""Tiny random DeepSeek-V2 / V3 models from transformers' own classes (fp32), shared by this
plugin's tests: 2 layers (a dense one, then DeepSeekMoE with 8 experts in 4 groups, each token
routed to 3 experts of its 2 best groups (more than the groups, so that the group limit matters
for V2's groups ranked by their best expert), plus 2 shared experts), YaRN rope scaling on. V2
without q_lora_rank (V2-Lite's plain q_proj) and softmax group-limited routing; V3 with
q_lora_rank and sigmoid routing with a correction bias. Sizes are multiples of 32 where a GGUF
Q8_0 row needs it."""
from __future__ import annotations

import torch
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
)

ARCHS = ("DeepseekV2", "DeepseekV3")

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1,
        "mscale": 0.707, "mscale_all_dim": 1.0}
"""Positions past 16 are extended; mscale != mscale_all_dim scales cos/sin as well."""

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=8,
              v_head_dim=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
              n_shared_experts=2, moe_intermediate_size=32, first_k_dense_replace=1,
              routed_scaling_factor=1.5, max_position_embeddings=64, eos_token_id=257,
              bos_token_id=256)


def tiny_deepseek(arch: str, seed: int = 0, rope: dict | None = None, **overrides):
    torch.manual_seed(seed)
    options = {**COMMON, "rope_parameters": dict(rope or YARN), **overrides}
    if arch == "DeepseekV2":
        model = DeepseekV2ForCausalLM(DeepseekV2Config(
            **{"q_lora_rank": None, "topk_method": "group_limited_greedy", **options}))
    else:
        model = DeepseekV3ForCausalLM(DeepseekV3Config(**{"q_lora_rank": 32, **options}))
    with torch.no_grad():  # clear-cut routing that differs between tokens
        for layer in model.model.layers[model.config.first_k_dense_replace:]:
            layer.mlp.gate.weight.normal_(0, 0.5)
            if arch == "DeepseekV3":
                layer.mlp.gate.e_score_correction_bias.normal_(0, 0.1)
    return model.eval()
