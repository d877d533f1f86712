"""Mistral and Mixtral hyper-parameters from a Hugging Face config.json or GGUF metadata.

One config type serves both: Mixtral is Mistral with a sparse mixture of experts in place of
the MLP (`num_local_experts` > 0). llama.cpp writes both as `llama` GGUF files; a Mixtral file
states its `expert_count` and `expert_used_count`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mistralrs.errors import ModelFormatError
from mistralrs.layers import rope_parameters_from_hf
from mistralrs.loading.config import (
    DecoderDims,
    decoder_dims,
    eos_ids,
    gguf_rope_parameters,
    require,
)


@dataclass
class MistralConfig(DecoderDims):
    """`intermediate_size` is that of the MLP, or of each expert."""

    rms_norm_eps: float
    rope: dict[str, Any]
    sliding_window: int | None = None
    """A query sees keys less than this many positions back (transformers' convention)."""
    num_local_experts: int = 0
    """0: a dense MLP (Mistral); else the experts of each layer's sparse MoE (Mixtral)."""
    num_experts_per_tok: int = 0
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def is_mixtral_gguf(view: dict[str, Any]) -> bool:
    return view.get("expert_count", 0) > 0


def parse_config(raw: dict[str, Any], fmt: str) -> MistralConfig:
    if fmt == "gguf":
        experts = raw.get("expert_count", 0)
        config = MistralConfig(
            **decoder_dims(raw, fmt),
            rms_norm_eps=raw.get("attention.layer_norm_rms_epsilon", 1e-5),
            rope=gguf_rope_parameters(raw),
            num_local_experts=experts,
            num_experts_per_tok=require(raw, "expert_used_count") if experts else 0,
            tie_word_embeddings=True,  # used only when the file has no `output.weight`
        )
    else:
        config = MistralConfig(
            **decoder_dims(raw, fmt),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope=rope_parameters_from_hf(raw),
            sliding_window=raw.get("sliding_window"),
            num_local_experts=raw.get("num_local_experts", 0),
            num_experts_per_tok=raw.get("num_experts_per_tok", 0),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            hidden_act=raw.get("hidden_act", "silu"),
            eos_token_ids=eos_ids(raw),
        )
    if config.num_local_experts and not 0 < config.num_experts_per_tok <= config.num_local_experts:
        raise ModelFormatError(f"the config routes each token to {config.num_experts_per_tok} "
                               f"of {config.num_local_experts} experts; expected 1 to "
                               f"{config.num_local_experts}")
    return config
