"""Gemma, Gemma 2 and Gemma 3 hyper-parameters from a Hugging Face config.json or GGUF metadata.

One config type serves the three generations; what differs is spelled out as fields (sandwich
norms, QK-norm, soft-capping, which layers attend within a sliding window, their rope bases).
Defaults follow transformers' config classes for HF checkpoints and llama.cpp for GGUF files.
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
)

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass
class GemmaConfig(DecoderDims):
    rms_norm_eps: float
    query_pre_attn_scalar: float
    """Attention scores are scaled by query_pre_attn_scalar ** -0.5."""
    rope: dict[str, Any]
    """Rope settings of the global (full-attention) layers."""
    local_rope: dict[str, Any]
    """Rope settings of the sliding-window layers (Gemma 3 gives them their own base)."""
    layer_types: tuple[str, ...]
    """SLIDING or FULL for each layer."""
    sliding_window: int | None = None
    """A sliding layer's query sees keys less than this many positions back."""
    sandwich_norms: bool = False
    """Gemma 2/3: norms after attention and around the MLP (else Gemma's pre-norm layer)."""
    qk_norm: bool = False
    """Gemma 3: RMSNorm over each query and key head before rope."""
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    hidden_act: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        known = set(self.layer_types) <= {SLIDING, FULL}
        if len(self.layer_types) != self.num_hidden_layers or not known:
            raise ModelFormatError(f"layer_types must give {SLIDING!r} or {FULL!r} for each of the "
                                   f"{self.num_hidden_layers} layers; got {list(self.layer_types)}")


def layer_pattern(num_layers: int, period: int) -> tuple[str, ...]:
    """Every `period`-th layer global, the others sliding (transformers' and llama.cpp's rule)."""
    return tuple(FULL if (i + 1) % period == 0 else SLIDING for i in range(num_layers))


def _hf_activation(raw: dict[str, Any]) -> str:
    """Gemma checkpoints say `hidden_activation` (or the legacy `hidden_act`); the plain "gelu"
    of the first releases means the tanh approximation, as transformers decides."""
    act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
    return "gelu_pytorch_tanh" if act == "gelu" else act


def _common(raw: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The fields every generation reads the same way; `rope` is the generic reading."""
    dims = decoder_dims(raw, fmt, default_head_dim=256, default_context=8192)
    if fmt == "gguf":
        return dict(
            **dims,
            rms_norm_eps=raw.get("attention.layer_norm_rms_epsilon", 1e-6),
            rope=gguf_rope_parameters(raw),
        )
    if raw.get("use_bidirectional_attention"):
        raise NotImplementedError("bidirectional Gemma attention (EmbeddingGemma) is not supported")
    return dict(
        **dims,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope=rope_parameters_from_hf(raw),
        hidden_act=_hf_activation(raw),
        tie_word_embeddings=raw.get("tie_word_embeddings", True),
        attention_bias=raw.get("attention_bias", False),
        eos_token_ids=eos_ids(raw),
    )


def _gguf_query_scalar(common: dict[str, Any], layers_of_27b: int) -> int:
    """GGUF files do not carry `query_pre_attn_scalar`; llama.cpp takes hidden/heads for the
    27B models (recognized by their layer count) and head_dim for every other size."""
    if common["num_hidden_layers"] == layers_of_27b:
        return common["hidden_size"] // common["num_attention_heads"]
    return common["head_dim"]


def parse_gemma(raw: dict[str, Any], fmt: str) -> GemmaConfig:
    common = _common(raw, fmt)
    return GemmaConfig(**common, query_pre_attn_scalar=common["head_dim"],
                       local_rope=common["rope"],
                       layer_types=(FULL,) * common["num_hidden_layers"])


def parse_gemma2(raw: dict[str, Any], fmt: str) -> GemmaConfig:
    common = _common(raw, fmt)
    if fmt == "gguf":
        scalar = _gguf_query_scalar(common, layers_of_27b=46)
        layer_types = layer_pattern(common["num_hidden_layers"], 2)
        window = raw.get("attention.sliding_window", 4096)
    else:
        scalar = raw.get("query_pre_attn_scalar", 256)
        layer_types = raw.get("layer_types") or layer_pattern(common["num_hidden_layers"], 2)
        window = raw.get("sliding_window", 4096)
    return GemmaConfig(
        **common,
        query_pre_attn_scalar=scalar,
        local_rope=common["rope"],
        layer_types=tuple(layer_types),
        sliding_window=window,
        sandwich_norms=True,
        attn_logit_softcapping=raw.get("attn_logit_softcapping", 50.0),
        final_logit_softcapping=raw.get("final_logit_softcapping", 30.0),
    )


def parse_gemma3(raw: dict[str, Any], fmt: str) -> GemmaConfig:
    """Gemma 3 text. Attention logits are never soft-capped (transformers ignores
    `attn_logit_softcapping` for Gemma 3, and llama.cpp's converter refuses it)."""
    common = _common(raw, fmt)
    if fmt == "gguf":
        scalar = _gguf_query_scalar(common, layers_of_27b=62)
        # llama.cpp fixes what the file does not say: every 6th layer global, local base 10000.
        layer_types = layer_pattern(common["num_hidden_layers"], 6)
        local_rope = {"rope_theta": 10000.0, "rope_type": "default"}
        window = raw.get("attention.sliding_window")
    else:
        # transformers 4 keeps the global base in `rope_theta` (default 1e6) and the local one
        # in `rope_local_base_freq`; transformers 5 has one `rope_parameters` entry per layer type.
        common["rope"] = rope_parameters_from_hf({"rope_theta": 1_000_000.0, **raw}, FULL)
        per_type = raw.get("rope_parameters")
        if isinstance(per_type, dict) and SLIDING in per_type:
            local_rope = rope_parameters_from_hf(raw, SLIDING)
        else:
            local_rope = {"rope_theta": raw.get("rope_local_base_freq", 10000.0),
                          "rope_type": "default"}
        scalar = raw.get("query_pre_attn_scalar", 256)
        period = raw.get("sliding_window_pattern", 6)
        layer_types = raw.get("layer_types") or layer_pattern(common["num_hidden_layers"], period)
        window = raw.get("sliding_window", 4096)
    return GemmaConfig(
        **common,
        query_pre_attn_scalar=scalar,
        local_rope=local_rope,
        layer_types=tuple(layer_types),
        sliding_window=window,
        sandwich_norms=True,
        qk_norm=True,
        final_logit_softcapping=raw.get("final_logit_softcapping"),
    )
