"""Llama hyper-parameters from a Hugging Face config.json or GGUF metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mistralrs.layers import rope_parameters_from_hf
from mistralrs.loading.config import eos_ids, gguf_rope_parameters, require


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: dict[str, Any]
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def parse_config(raw: dict[str, Any], fmt: str) -> LlamaConfig:
    if fmt == "gguf":
        heads = require(raw, "attention.head_count")
        hidden = require(raw, "embedding_length")
        return LlamaConfig(
            vocab_size=require(raw, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=require(raw, "feed_forward_length"),
            num_hidden_layers=require(raw, "block_count"),
            num_attention_heads=heads,
            num_key_value_heads=raw.get("attention.head_count_kv", heads),
            head_dim=raw.get("attention.key_length", hidden // heads),
            rms_norm_eps=raw.get("attention.layer_norm_rms_epsilon", 1e-5),
            rope=gguf_rope_parameters(raw),
            max_position_embeddings=raw.get("context_length", 4096),
            tie_word_embeddings=True,  # used only when the file has no `output.weight`
        )
    heads = require(raw, "num_attention_heads")
    hidden = require(raw, "hidden_size")
    return LlamaConfig(
        vocab_size=require(raw, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=require(raw, "intermediate_size"),
        num_hidden_layers=require(raw, "num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or hidden // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope=rope_parameters_from_hf(raw),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        attention_bias=raw.get("attention_bias", False),
        mlp_bias=raw.get("mlp_bias", False),
        hidden_act=raw.get("hidden_act", "silu"),
        eos_token_ids=eos_ids(raw),
    )
