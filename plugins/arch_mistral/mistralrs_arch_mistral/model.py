"""The Mistral and Mixtral forward pass, composed from `mistralrs.layers`: Llama's pre-norm
decoder with sliding-window attention, and for Mixtral a sparse MoE in place of the MLP."""
from __future__ import annotations

from torch import nn

from mistralrs.layers import (
    Attention,
    CausalLM,
    Decoder,
    Embedding,
    GatedMLP,
    PreNormDecoderLayer,
    RMSNorm,
    RotaryEmbedding,
    SelfAttention,
    SparseMoE,
)
from mistralrs_arch_mistral.config import MistralConfig


def _feed_forward(config: MistralConfig) -> nn.Module:
    if config.num_local_experts:
        return SparseMoE(config.hidden_size, config.intermediate_size, config.num_local_experts,
                         config.num_experts_per_tok, config.hidden_act)
    return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)


def _decoder_layer(config: MistralConfig, layer_index: int,
                   rotary: RotaryEmbedding) -> PreNormDecoderLayer:
    d = config.head_dim
    attn = Attention(layer_index, config.num_attention_heads, config.num_key_value_heads, d,
                     scale=d ** -0.5, sliding_window=config.sliding_window)
    return PreNormDecoderLayer(
        RMSNorm(config.hidden_size, config.rms_norm_eps),
        SelfAttention(config.hidden_size, attn, rotary),
        RMSNorm(config.hidden_size, config.rms_norm_eps),
        _feed_forward(config))


def build_model(config: MistralConfig) -> CausalLM:
    rotary = RotaryEmbedding(config.head_dim, config.rope, config.max_position_embeddings)
    layers = [_decoder_layer(config, i, rotary) for i in range(config.num_hidden_layers)]
    decoder = Decoder(Embedding(config.vocab_size, config.hidden_size), layers,
                      RMSNorm(config.hidden_size, config.rms_norm_eps))
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings)
