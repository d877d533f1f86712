"""The Starcoder2 forward pass, composed from `mistralrs.layers`: pre-norm layers with
LayerNorm (with bias), biased projections, a plain gelu MLP and a sliding window."""
from __future__ import annotations

from mistralrs.layers import (
    MLP,
    Attention,
    CausalLM,
    Decoder,
    Embedding,
    LayerNorm,
    PreNormDecoderLayer,
    RotaryEmbedding,
    SelfAttention,
)
from mistralrs_arch_starcoder.config import Starcoder2Config


def build_model(config: Starcoder2Config) -> CausalLM:
    hidden, d = config.hidden_size, config.head_dim
    rotary = RotaryEmbedding(d, config.rope, config.max_position_embeddings)

    def norm() -> LayerNorm:
        return LayerNorm(hidden, config.norm_epsilon)

    def layer(index: int) -> PreNormDecoderLayer:
        attn = Attention(index, config.num_attention_heads, config.num_key_value_heads, d,
                         scale=d ** -0.5, sliding_window=config.sliding_window)
        self_attn = SelfAttention(hidden, attn, rotary, config.use_bias, config.use_bias)
        mlp = MLP(hidden, config.intermediate_size, config.hidden_act, config.use_bias)
        return PreNormDecoderLayer(norm(), self_attn, norm(), mlp)

    layers = [layer(i) for i in range(config.num_hidden_layers)]
    decoder = Decoder(Embedding(config.vocab_size, hidden), layers, norm())
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings)
