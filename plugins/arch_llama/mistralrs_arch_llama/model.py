"""The Llama forward pass, composed from `mistralrs.layers`."""
from __future__ import annotations

import torch
from torch import nn

from mistralrs.layers import (
    Attention,
    Batch,
    CausalLM,
    Decoder,
    Embedding,
    GatedMLP,
    QuantLinear,
    RMSNorm,
    RotaryEmbedding,
)
from mistralrs_arch_llama.config import LlamaConfig


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_index: int, rotary: RotaryEmbedding):
        super().__init__()
        h, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        bias = config.attention_bias
        self.q_proj = QuantLinear(config.hidden_size, h * d, bias)
        self.k_proj = QuantLinear(config.hidden_size, kv * d, bias)
        self.v_proj = QuantLinear(config.hidden_size, kv * d, bias)
        self.o_proj = QuantLinear(h * d, config.hidden_size, bias)
        self.rotary = rotary
        self.attn = Attention(layer_index, h, kv, d, scale=d ** -0.5)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        t, d = x.shape[0], self.attn.head_dim
        q = self.q_proj(x).view(t, self.attn.num_heads, d)
        k = self.k_proj(x).view(t, self.attn.num_kv_heads, d)
        v = self.v_proj(x).view(t, self.attn.num_kv_heads, d)
        q, k = self.rotary(q, k, batch)
        return self.o_proj(self.attn(q, k, v, batch))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_index: int, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_index, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                            config.mlp_bias)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch)
        return x + self.mlp(self.post_attention_layernorm(x))


def build_model(config: LlamaConfig) -> CausalLM:
    rotary = RotaryEmbedding(config.head_dim, config.rope, config.max_position_embeddings)
    layers = [LlamaDecoderLayer(config, i, rotary) for i in range(config.num_hidden_layers)]
    decoder = Decoder(Embedding(config.vocab_size, config.hidden_size), layers,
                      RMSNorm(config.hidden_size, config.rms_norm_eps))
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings)
