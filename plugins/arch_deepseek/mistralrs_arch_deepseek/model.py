"""The DeepSeek-V2 / V3 forward pass, composed from `mistralrs.layers`: pre-norm decoder layers
of multi-head latent attention and, past the first `first_k_dense_replace` dense layers,
DeepSeekMoE (routed experts plus shared experts)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from mistralrs.layers import (
    CausalLM,
    Decoder,
    Embedding,
    GatedMLP,
    PreNormDecoderLayer,
    RMSNorm,
    RotaryEmbedding,
    SparseMoE,
)
from mistralrs.layers.moe import BiasedSigmoidRouting, grouped_softmax_topk
from mistralrs_arch_deepseek.attention import MultiHeadLatentAttention
from mistralrs_arch_deepseek.config import DeepseekConfig


class SharedExpertsMoE(SparseMoE):
    """`SparseMoE` plus `shared_experts`, one gated MLP that every token runs (DeepSeekMoE's
    always-active experts, fused into one MLP num_shared_experts times as wide)."""

    def __init__(self, config: DeepseekConfig):
        super().__init__(config.hidden_size, config.moe_intermediate_size, config.num_experts,
                         config.num_experts_per_tok, config.hidden_act, _routing(config))
        shared = config.num_shared_experts * config.moe_intermediate_size
        self.shared_experts = (GatedMLP(config.hidden_size, shared, config.hidden_act,
                                        config.mlp_bias) if shared else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routed = super().forward(x)
        return routed if self.shared_experts is None else routed + self.shared_experts(x)


def _routing(config: DeepseekConfig):
    options = dict(num_groups=config.num_groups, topk_groups=config.topk_groups,
                   renormalize=config.norm_topk_prob,
                   scaling_factor=config.routed_scaling_factor)
    if config.scoring == "sigmoid":
        return BiasedSigmoidRouting(config.num_experts, **options)
    return partial(grouped_softmax_topk, **options)


def _feed_forward(config: DeepseekConfig, index: int) -> nn.Module:
    if config.is_moe_layer(index):
        return SharedExpertsMoE(config)
    return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                    config.mlp_bias)


def build_model(config: DeepseekConfig) -> CausalLM:
    rotary = RotaryEmbedding(config.qk_rope_head_dim, config.rope, config.max_position_embeddings)

    def norm() -> RMSNorm:
        return RMSNorm(config.hidden_size, config.rms_norm_eps)

    layers = [PreNormDecoderLayer(norm(), MultiHeadLatentAttention(config, i, rotary), norm(),
                                  _feed_forward(config, i))
              for i in range(config.num_hidden_layers)]
    decoder = Decoder(Embedding(config.vocab_size, config.hidden_size), layers, norm())
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings)
