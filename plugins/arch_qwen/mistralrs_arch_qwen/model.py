"""The Qwen2 / Qwen3 forward pass: Llama's pre-norm layers, composed from `mistralrs.layers`,
with the family's attention options (biases, QK-norm, per-layer sliding windows)."""
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
from mistralrs_arch_qwen.config import QwenConfig


def build_model(config: QwenConfig) -> CausalLM:
    hidden, d = config.hidden_size, config.head_dim
    rotary = RotaryEmbedding(d, config.rope, config.max_position_embeddings)

    def norm(dim: int) -> RMSNorm:
        return RMSNorm(dim, config.rms_norm_eps)

    def layer(index: int, window: int | None) -> PreNormDecoderLayer:
        attn = Attention(index, config.num_attention_heads, config.num_key_value_heads, d,
                         scale=d ** -0.5, sliding_window=window)
        self_attn = SelfAttention(hidden, attn, rotary, config.qkv_bias, config.o_bias,
                                  qk_norm=norm if config.qk_norm else None)
        mlp = GatedMLP(hidden, config.intermediate_size, config.hidden_act)
        return PreNormDecoderLayer(norm(hidden), self_attn, norm(hidden), mlp)

    layers = [layer(i, window) for i, window in enumerate(config.sliding_windows)]
    decoder = Decoder(Embedding(config.vocab_size, hidden), layers, norm(hidden))
    return CausalLM(decoder, config.vocab_size, config.tie_word_embeddings)
