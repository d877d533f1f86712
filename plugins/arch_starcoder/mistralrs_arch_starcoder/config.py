"""Starcoder2 hyper-parameters from a Hugging Face config.json or GGUF metadata.

Defaults follow transformers' `Starcoder2Config` for HF checkpoints and llama.cpp for GGUF
files. llama.cpp's converter writes no sliding window and llama.cpp attends fully; a file that
states `starcoder2.attention.sliding_window` gets its window.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mistralrs.layers import rope_parameters_from_hf
from mistralrs.loading.config import DecoderDims, decoder_dims, eos_ids, gguf_rope_parameters


@dataclass
class Starcoder2Config(DecoderDims):
    norm_epsilon: float
    rope: dict[str, Any]
    sliding_window: int | None = None
    """Every layer's queries attend within this many positions (None: fully)."""
    use_bias: bool = True
    """Biases on every projection (and the MLP)."""
    hidden_act: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def parse_config(raw: dict[str, Any], fmt: str) -> Starcoder2Config:
    dims = decoder_dims(raw, fmt)
    if fmt == "gguf":
        return Starcoder2Config(
            **dims,
            norm_epsilon=raw.get("attention.layer_norm_epsilon", 1e-5),
            rope=gguf_rope_parameters(raw),
            sliding_window=raw.get("attention.sliding_window"),
        )
    return Starcoder2Config(
        **dims,
        norm_epsilon=raw.get("norm_epsilon", 1e-5),
        rope=rope_parameters_from_hf(raw),
        sliding_window=raw.get("sliding_window"),
        use_bias=raw.get("use_bias", True),
        hidden_act=raw.get("hidden_act", "gelu_pytorch_tanh"),
        tie_word_embeddings=raw.get("tie_word_embeddings", True),
        eos_token_ids=eos_ids(raw),
    )
