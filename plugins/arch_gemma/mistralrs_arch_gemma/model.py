"""The Gemma forward pass (all three generations), composed from `mistralrs.layers`.

Common to all: embeddings scaled by sqrt(hidden), RMSNorm scaling by (1 + w), a GeGLU MLP and
tied embeddings. Gemma 2 adds norms after attention and around the MLP ("sandwich"),
sliding-window layers and soft-capping; Gemma 3 adds QK-norm and a separate rope base for its
sliding-window layers.
"""
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
    PreNormDecoderLayer,
    RMSNorm,
    RotaryEmbedding,
    SelfAttention,
)
from mistralrs_arch_gemma.config import SLIDING, GemmaConfig


def gemma_norm(config: GemmaConfig, dim: int | None = None) -> RMSNorm:
    return RMSNorm(dim or config.hidden_size, config.rms_norm_eps, unit_offset=True)


def gemma_attention(config: GemmaConfig, layer_index: int,
                    rotary: RotaryEmbedding) -> SelfAttention:
    sliding = config.layer_types[layer_index] == SLIDING
    attn = Attention(layer_index, config.num_attention_heads, config.num_key_value_heads,
                     config.head_dim, scale=config.query_pre_attn_scalar ** -0.5,
                     sliding_window=config.sliding_window if sliding else None,
                     softcap=config.attn_logit_softcapping)
    qk_norm = (lambda dim: gemma_norm(config, dim)) if config.qk_norm else None
    return SelfAttention(config.hidden_size, attn, rotary, config.attention_bias,
                         config.attention_bias, qk_norm=qk_norm)


def gemma_mlp(config: GemmaConfig) -> GatedMLP:
    return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)


def gemma_decoder_layer(config: GemmaConfig, layer_index: int,
                        rotary: RotaryEmbedding) -> PreNormDecoderLayer:
    """Gemma 1: a norm before attention and one before the MLP, as in Llama."""
    return PreNormDecoderLayer(gemma_norm(config), gemma_attention(config, layer_index, rotary),
                               gemma_norm(config), gemma_mlp(config))


class SandwichDecoderLayer(nn.Module):
    """Gemma 2/3: each sub-block's output is normalized again before joining the residual
    (so here `post_attention_layernorm` acts on the attention output, unlike Gemma 1)."""

    def __init__(self, config: GemmaConfig, layer_index: int, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = gemma_norm(config)
        self.self_attn = gemma_attention(config, layer_index, rotary)
        self.post_attention_layernorm = gemma_norm(config)
        self.pre_feedforward_layernorm = gemma_norm(config)
        self.mlp = gemma_mlp(config)
        self.post_feedforward_layernorm = gemma_norm(config)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """May overwrite x: each post-norm adds its output into the residual stream."""
        attended = self.self_attn(self.input_layernorm(x), batch)
        x = self.post_attention_layernorm(attended, residual=x)
        return self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)),
                                               residual=x)


def build_model(config: GemmaConfig) -> CausalLM:
    def rotary(rope):
        return RotaryEmbedding(config.head_dim, rope, config.max_position_embeddings)

    global_rotary = rotary(config.rope)
    local_rotary = global_rotary if config.local_rope == config.rope else rotary(config.local_rope)
    layer_type = SandwichDecoderLayer if config.sandwich_norms else gemma_decoder_layer
    layers = [layer_type(config, i, local_rotary if kind == SLIDING else global_rotary)
              for i, kind in enumerate(config.layer_types)]
    decoder = Decoder(Embedding(config.vocab_size, config.hidden_size), layers, gemma_norm(config),
                      embed_scale=config.hidden_size ** 0.5)
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings,
                    final_logit_softcap=config.final_logit_softcapping)
