"""The Llama forward pass, composed from `mistralrs.layers`."""
from __future__ import annotations

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
)
from mistralrs_arch_llama.config import LlamaConfig


def decoder_layer(config: LlamaConfig, layer_index: int,
                  rotary: RotaryEmbedding) -> PreNormDecoderLayer:
    d = config.head_dim
    attn = Attention(layer_index, config.num_attention_heads, config.num_key_value_heads, d,
                     scale=d ** -0.5)
    return PreNormDecoderLayer(
        RMSNorm(config.hidden_size, config.rms_norm_eps),
        SelfAttention(config.hidden_size, attn, rotary, config.attention_bias,
                      config.attention_bias),
        RMSNorm(config.hidden_size, config.rms_norm_eps),
        GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                 config.mlp_bias),
    )


def build_model(config: LlamaConfig) -> CausalLM:
    rotary = RotaryEmbedding(config.head_dim, config.rope, config.max_position_embeddings)
    layers = [decoder_layer(config, i, rotary) for i in range(config.num_hidden_layers)]
    decoder = Decoder(Embedding(config.vocab_size, config.hidden_size), layers,
                      RMSNorm(config.hidden_size, config.rms_norm_eps))
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings)
