"""Phi-2, Phi-3 and Phi-3.5-MoE hyper-parameters from a Hugging Face config.json or GGUF
metadata.

Defaults follow transformers' `PhiConfig`, `Phi3Config` and `PhimoeConfig` for HF checkpoints
and llama.cpp's converter for GGUF files. Where a GGUF file cannot say something, the values of
the published models are assumed: Phi-3.5-MoE's biases and router jitter (0.01). A sliding
window that a file states is applied, as transformers does (llama.cpp ignores it for Phi-3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mistralrs.layers import rope_parameters_from_hf
from mistralrs.loading.config import (
    DecoderDims,
    decoder_dims,
    eos_ids,
    gguf_rope_parameters,
    require,
)


@dataclass
class PhiConfig(DecoderDims):
    norm_eps: float
    """LayerNorm's eps (Phi-2, Phi-3.5-MoE) or RMSNorm's (Phi-3)."""
    rope: dict[str, Any]
    rotary_dim: int
    """The leading features of each head that rotary rotates (Phi-2: 40%)."""
    hidden_act: str = "silu"
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    qk_layernorm: bool = False
    """Phi-2 family: a LayerNorm over each query and key head."""
    attention_bias: bool = False
    lm_head_bias: bool = False
    num_local_experts: int = 0
    """Phi-3.5-MoE: experts per layer (0: a dense MLP)."""
    num_experts_per_tok: int = 0
    router_jitter_noise: float = 0.0
    """Phi-3.5-MoE: the relative logit margin of sparsemixer routing (half of it)."""
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def _rotary_dim(head_dim: int, rope: dict[str, Any], default_factor: float) -> int:
    return int(head_dim * rope.get("partial_rotary_factor", default_factor))


def _gguf_rope(raw: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's converter writes longrope's factors as the tensors `rope_factors_short` /
    `rope_factors_long` (loaded into the rotary module) and, with them, their cos/sin scale
    `rope.scaling.attn_factor`."""
    rope = gguf_rope_parameters(raw)
    if "rope.scaling.attn_factor" not in raw:
        return rope
    return {**rope, "rope_type": "longrope",
            "attention_factor": raw["rope.scaling.attn_factor"],
            "original_max_position_embeddings": require(raw, "rope.scaling.original_context_length")}


def parse_phi2(raw: dict[str, Any], fmt: str) -> PhiConfig:
    """Phi-2 (and Phi-1, Phi-1.5): biases everywhere, LayerNorm, partial rotary."""
    dims = decoder_dims(raw, fmt, default_context=2048)
    family = dict(attention_bias=True, lm_head_bias=True)
    if fmt == "gguf":
        return PhiConfig(
            **dims, **family,
            norm_eps=raw.get("attention.layer_norm_epsilon", 1e-5),
            rope=gguf_rope_parameters(raw),
            rotary_dim=raw.get("rope.dimension_count", dims["head_dim"]),
            hidden_act="gelu_new",
            tie_word_embeddings=True,  # used only when the file has no `output.weight`
        )
    rope = rope_parameters_from_hf(raw)
    return PhiConfig(
        **dims, **family,
        norm_eps=raw.get("layer_norm_eps", 1e-5),
        rope=rope,
        rotary_dim=_rotary_dim(dims["head_dim"], rope, 0.5),
        hidden_act=raw.get("hidden_act", "gelu_new"),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        qk_layernorm=raw.get("qk_layernorm", False),
        eos_token_ids=eos_ids(raw),
    )


def parse_phi3(raw: dict[str, Any], fmt: str) -> PhiConfig:
    """Phi-3, Phi-3.5 and Phi-4 dense: RMSNorm, no biases, longrope on the 128k models."""
    dims = decoder_dims(raw, fmt)
    if fmt == "gguf":
        return _parse_phi3_gguf(raw, dims)
    rope = rope_parameters_from_hf(raw)
    return PhiConfig(
        **dims,
        norm_eps=raw.get("rms_norm_eps", 1e-5),
        rope=rope,
        rotary_dim=_rotary_dim(dims["head_dim"], rope, 1.0),
        hidden_act=raw.get("hidden_act", "silu"),
        sliding_window=raw.get("sliding_window"),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        eos_token_ids=eos_ids(raw),
    )


def parse_phimoe(raw: dict[str, Any], fmt: str) -> PhiConfig:
    """Phi-3.5-MoE: Phi-3's attention (with biases) and LayerNorm, sparsemixer-routed experts."""
    dims = decoder_dims(raw, fmt)
    if fmt == "gguf":
        return _parse_phi3_gguf(raw, dims, attention_bias=True, lm_head_bias=True,
                                num_local_experts=require(raw, "expert_count"),
                                num_experts_per_tok=require(raw, "expert_used_count"),
                                router_jitter_noise=0.01)
    rope = rope_parameters_from_hf({"rope_theta": 1e6, **raw})  # transformers' PhiMoE base
    return PhiConfig(
        **dims,
        norm_eps=raw.get("rms_norm_eps", 1e-5),
        rope=rope,
        rotary_dim=_rotary_dim(dims["head_dim"], rope, 1.0),
        hidden_act=raw.get("hidden_act", "silu"),
        sliding_window=raw.get("sliding_window"),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        attention_bias=raw.get("attention_bias", False),
        lm_head_bias=raw.get("lm_head_bias", False),
        num_local_experts=raw.get("num_local_experts", 16),
        num_experts_per_tok=raw.get("num_experts_per_tok", 2),
        router_jitter_noise=raw.get("router_jitter_noise", 0.01),
        eos_token_ids=eos_ids(raw),
    )


def _parse_phi3_gguf(raw: dict[str, Any], dims: dict[str, int], **family) -> PhiConfig:
    """llama.cpp's `phi3` and `phimoe` metadata (the converter writes the sliding window as 0
    when the model has none)."""
    return PhiConfig(
        **dims, **family,
        norm_eps=raw.get("attention.layer_norm_rms_epsilon", 1e-5),
        rope=_gguf_rope(raw),
        rotary_dim=raw.get("rope.dimension_count", dims["head_dim"]),
        sliding_window=raw.get("attention.sliding_window") or None,
        tie_word_embeddings=True,  # used only when the file has no `output.weight`
    )
