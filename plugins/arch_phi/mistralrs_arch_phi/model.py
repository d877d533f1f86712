"""The Phi forward passes, composed from `mistralrs.layers`: Phi-2's parallel layers, and
Phi-3's pre-norm layers with a gated MLP (Phi-3) or sparsemixer-routed experts (Phi-3.5-MoE)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from mistralrs.layers import (
    MLP,
    Attention,
    Batch,
    CausalLM,
    Decoder,
    Embedding,
    GatedMLP,
    LayerNorm,
    PreNormDecoderLayer,
    RMSNorm,
    RotaryEmbedding,
    SelfAttention,
    SparseMoE,
    sparsemixer,
)
from mistralrs_arch_phi.config import PhiConfig


class ParallelDecoderLayer(nn.Module):
    """x + self_attn(input_layernorm(x)) + mlp(input_layernorm(x)): Phi-2's layer, attention and
    MLP side by side on one LayerNorm."""

    def __init__(self, input_layernorm: nn.Module, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.mlp = mlp

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        normed = self.input_layernorm(x)
        return self.self_attn(normed, batch) + self.mlp(normed) + x


def _rotary(config: PhiConfig) -> RotaryEmbedding:
    return RotaryEmbedding(config.head_dim, config.rope, config.max_position_embeddings,
                           config.rotary_dim)


def _attention(config: PhiConfig, index: int) -> Attention:
    d = config.head_dim
    return Attention(index, config.num_attention_heads, config.num_key_value_heads, d,
                     scale=d ** -0.5, sliding_window=config.sliding_window)


def build_phi2(config: PhiConfig) -> CausalLM:
    hidden, rotary = config.hidden_size, _rotary(config)

    def norm(dim: int = hidden) -> LayerNorm:
        return LayerNorm(dim, config.norm_eps)

    def layer(index: int) -> ParallelDecoderLayer:
        self_attn = SelfAttention(hidden, _attention(config, index), rotary, True, True,
                                  qk_norm=norm if config.qk_layernorm else None)
        mlp = MLP(hidden, config.intermediate_size, config.hidden_act, bias=True)
        return ParallelDecoderLayer(norm(), self_attn, mlp)

    layers = [layer(i) for i in range(config.num_hidden_layers)]
    decoder = Decoder(Embedding(config.vocab_size, hidden), layers, norm())
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings, lm_head_bias=True)


def build_phi3(config: PhiConfig) -> CausalLM:
    """Phi-3 (RMSNorm, gated MLP) and Phi-3.5-MoE (LayerNorm, experts) alike."""
    hidden, rotary = config.hidden_size, _rotary(config)
    moe = config.num_local_experts > 0

    def norm() -> nn.Module:
        return LayerNorm(hidden, config.norm_eps) if moe else RMSNorm(hidden, config.norm_eps)

    def mlp() -> nn.Module:
        if not moe:
            return GatedMLP(hidden, config.intermediate_size, config.hidden_act)
        routing = partial(sparsemixer, jitter_eps=config.router_jitter_noise)
        return SparseMoE(hidden, config.intermediate_size, config.num_local_experts,
                         config.num_experts_per_tok, config.hidden_act, routing)

    def layer(index: int) -> PreNormDecoderLayer:
        bias = config.attention_bias
        self_attn = SelfAttention(hidden, _attention(config, index), rotary, bias, bias)
        return PreNormDecoderLayer(norm(), self_attn, norm(), mlp())

    layers = [layer(i) for i in range(config.num_hidden_layers)]
    decoder = Decoder(Embedding(config.vocab_size, hidden), layers, norm())
    # Hugging Face's name for the shared rotary: where GGUF's longrope factor tensors load.
    decoder.rotary_emb = rotary
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings,
                    lm_head_bias=config.lm_head_bias)
