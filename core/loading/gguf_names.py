"""GGUF tensor names (llama.cpp's, as gguf-py's `TensorNameMap` lists them) -> the Hugging Face
module names that `mistralrs.layers` models use, for the many architectures that share the
llama naming. Plugins add their own entries for tensors outside this table."""
from __future__ import annotations

import re
from typing import Callable

import torch

from mistralrs.kernels.gguf.packed import QuantizedTensor
from mistralrs.plugins.architecture import MappedTensor, TensorTransform, WeightMapper

_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

_PER_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_NAME = re.compile(r"(\w+)\.(weight|bias)$")


def llama_style_name(gguf_name: str, per_layer: dict[str, str] | None = None) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None if unknown.
    `per_layer` overrides or extends the per-layer table (e.g. Gemma's `ffn_norm` is its
    `pre_feedforward_layernorm`)."""
    table = {**_PER_LAYER, **(per_layer or {})}
    if match := _LAYER_NAME.match(gguf_name):
        layer, stem, suffix = match.groups()
        if stem in table:
            return f"model.layers.{layer}.{table[stem]}.{suffix}"
        return None
    if match := _GLOBAL_NAME.match(gguf_name):
        stem, suffix = match.groups()
        if stem in _GLOBAL:
            return f"{_GLOBAL[stem]}.{suffix}"
    return None


def llama_style_mapper(per_layer: dict[str, str] | None = None,
                       transform_for: Callable[[str], TensorTransform | None] = lambda stem: None
                       ) -> WeightMapper:
    """A GGUF weight mapper for llama-named files: `llama_style_name` for the destination, and
    `transform_for(stem)` (the name's part before `.weight`, e.g. `attn_q`) for the transform."""

    def map_gguf(name: str) -> list[MappedTensor]:
        target = llama_style_name(name, per_layer)
        if target is None:
            return []
        return [MappedTensor(target, transform_for(name.split(".")[-2]))]

    return map_gguf


def rotary_unpermutes(num_heads: int, num_kv_heads: int) -> dict[str, TensorTransform]:
    """The q/k transforms for files whose converter permuted rotary rows (the llama family)."""
    return {"attn_q": unpermute_rotary_rows(num_heads),
            "attn_k": unpermute_rotary_rows(num_kv_heads)}


def unpermute_rotary_rows(num_heads: int):
    """The inverse of llama.cpp's conversion-time permutation of q/k projection rows.

    llama.cpp rotates adjacent feature pairs; Hugging Face checkpoints (and our rotary) rotate
    the two halves of each head. The converter reorders each head's rows from
    [half0, half1] to interleaved pairs; this puts them back. Works on packed rows too."""

    def transform(tensor: torch.Tensor | QuantizedTensor):
        rows = tensor.shape[0]
        half = rows // num_heads // 2
        order = torch.arange(rows).reshape(num_heads, half, 2).transpose(1, 2).reshape(-1)
        return tensor.rows(order) if isinstance(tensor, QuantizedTensor) else tensor[order]

    return transform
