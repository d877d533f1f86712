"""Llama hyper-parameters from a Hugging Face config.json or GGUF metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mistralrs.errors import ArchitectureNotFoundError
from mistralrs.layers import rope_parameters_from_hf
from mistralrs.loading.config import DecoderDims, decoder_dims, eos_ids, gguf_rope_parameters


@dataclass
class LlamaConfig(DecoderDims):
    rms_norm_eps: float
    rope: dict[str, Any]
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def parse_config(raw: dict[str, Any], fmt: str) -> LlamaConfig:
    dims = decoder_dims(raw, fmt, default_context=2048 if fmt == "hf" else 4096)
    if fmt == "gguf":
        if raw.get("expert_count"):
            raise ArchitectureNotFoundError(
                "this GGUF file is a mixture-of-experts `llama` model (Mixtral); install the "
                "plugin that provides it: `pip install mistralrs-arch-mistral`")
        return LlamaConfig(
            **dims,
            rms_norm_eps=raw.get("attention.layer_norm_rms_epsilon", 1e-5),
            rope=gguf_rope_parameters(raw),
            tie_word_embeddings=True,  # used only when the file has no `output.weight`
        )
    return LlamaConfig(
        **dims,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope=rope_parameters_from_hf(raw),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        attention_bias=raw.get("attention_bias", False),
        mlp_bias=raw.get("mlp_bias", False),
        hidden_act=raw.get("hidden_act", "silu"),
        eos_token_ids=eos_ids(raw),
    )
