"""Qwen2 and Qwen3 hyper-parameters from a Hugging Face config.json or GGUF metadata.

Both are Llama-shaped. Qwen2 biases its q/k/v projections; Qwen3 normalizes each query and key
head (QK-norm) and may bias all four projections (`attention_bias`). Either may attend within a
sliding window on some layers when `use_sliding_window` is set; GGUF files cannot say so, and
llama.cpp attends fully, as we do for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mistralrs.layers import rope_parameters_from_hf
from mistralrs.loading.config import DecoderDims, decoder_dims, eos_ids, gguf_rope_parameters

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass
class QwenConfig(DecoderDims):
    rms_norm_eps: float
    rope: dict[str, Any]
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    sliding_windows: tuple[int | None, ...]
    """Per layer: the window its queries attend within, or None for full attention."""
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def _hf_sliding_windows(raw: dict[str, Any], num_layers: int) -> tuple[int | None, ...]:
    """transformers' rule: without `use_sliding_window` every layer attends fully; with it, the
    layers `layer_types` calls sliding (by default those from `max_window_layers` up) attend
    within `sliding_window`."""
    window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
    first_sliding = raw.get("max_window_layers", 28)
    layer_types = raw.get("layer_types") or [SLIDING if i >= first_sliding else FULL
                                             for i in range(num_layers)]
    return tuple(window if kind == SLIDING else None for kind in layer_types)


def _parse(raw: dict[str, Any], fmt: str, default_head_dim: int | None, **family) -> QwenConfig:
    dims = decoder_dims(raw, fmt, default_head_dim, default_context=32768)
    if fmt == "gguf":
        return QwenConfig(
            **dims, **family,
            rms_norm_eps=raw.get("attention.layer_norm_rms_epsilon", 1e-6),
            rope=gguf_rope_parameters(raw),
            sliding_windows=(None,) * dims["num_hidden_layers"],
            tie_word_embeddings=True,  # used only when the file has no `output.weight`
        )
    return QwenConfig(
        **dims, **family,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope=rope_parameters_from_hf(raw),
        sliding_windows=_hf_sliding_windows(raw, dims["num_hidden_layers"]),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        hidden_act=raw.get("hidden_act", "silu"),
        eos_token_ids=eos_ids(raw),
    )


def parse_qwen2(raw: dict[str, Any], fmt: str) -> QwenConfig:
    return _parse(raw, fmt, None, qkv_bias=True, o_bias=False, qk_norm=False)


def parse_qwen3(raw: dict[str, Any], fmt: str) -> QwenConfig:
    """transformers' Qwen3 defaults to head_dim 128; llama.cpp's qwen3 has no projection
    biases."""
    bias = fmt == "hf" and bool(raw.get("attention_bias", False))
    return _parse(raw, fmt, 128, qkv_bias=bias, o_bias=bias, qk_norm=True)
