"""Registers Phi2, Phi3 and Phi3_5MoE with mistralrs (entry point `mistralrs.architectures`).

Phi-3 checkpoints fuse projections (`qkv_proj`, `gate_up_proj`; llama.cpp's `attn_qkv` and a
`ffn_up` of twice the width, as do some Phi-2 GGUF files): the weight mappers split them into
the core layers' q/k/v and gate/up by rows, packed GGUF rows included. llama.cpp runs the Phi
family with NEOX (rotate-half) rope, so q/k rows keep their Hugging Face order.
"""
from __future__ import annotations

from itertools import accumulate
from typing import TYPE_CHECKING

import torch

from mistralrs.loading.moe_names import GGUF_MOE_NAMES, all_experts, hf_moe_tensor
from mistralrs.loading.gguf_names import llama_style_name
from mistralrs.plugins import Architecture, MappedTensor, hookimpl, lazy

if TYPE_CHECKING:
    from mistralrs_arch_phi.config import PhiConfig

# Hugging Face module names (Phi-2's, Phi-3.5-MoE's router) -> the core layers'.
_HF_RENAMES = {
    ".self_attn.dense.": ".self_attn.o_proj.",
    ".self_attn.q_layernorm.": ".self_attn.q_norm.",
    ".self_attn.k_layernorm.": ".self_attn.k_norm.",
    ".mlp.fc1.": ".mlp.up_proj.",
    ".mlp.fc2.": ".mlp.down_proj.",
    "model.final_layernorm.": "model.norm.",
}

_GGUF_PHI2 = {"attn_qkv": "self_attn.qkv_proj"}
_GGUF_PHI3 = {
    **_GGUF_PHI2,
    "ffn_up": "mlp.gate_up_proj",
    **GGUF_MOE_NAMES,
}
_GGUF_ROPE_FACTORS = {
    "rope_factors_short.weight": "model.rotary_emb.short_factor",
    "rope_factors_long.weight": "model.rotary_emb.long_factor",
}


def _hf_name(name: str) -> str:
    for theirs, ours in _HF_RENAMES.items():
        name = name.replace(theirs, ours)
    return name


def _row_slice(start: int, stop: int):
    def transform(tensor):
        return tensor[start:stop] if isinstance(tensor, torch.Tensor) else tensor.rows(
            slice(start, stop))
    return transform


def _fused_parts(config: PhiConfig) -> dict[str, list[tuple[str, int]]]:
    """Fused module -> the modules its rows stack, in order, with their row counts."""
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    i = config.intermediate_size
    return {
        "self_attn.qkv_proj": [("self_attn.q_proj", q), ("self_attn.k_proj", kv),
                               ("self_attn.v_proj", kv)],
        "mlp.gate_up_proj": [("mlp.gate_proj", i), ("mlp.up_proj", i)],
    }


def _split_fused(target: str, fused: dict[str, list[tuple[str, int]]]) -> list[MappedTensor]:
    module, _, leaf = target.rpartition(".")
    for name, parts in fused.items():
        if module.endswith("." + name):
            parent = module[:-len(name)]
            bounds = list(accumulate([0] + [rows for _, rows in parts]))
            return [MappedTensor(f"{parent}{part}.{leaf}", _row_slice(start, stop))
                    for (part, _), start, stop in zip(parts, bounds, bounds[1:])]
    return [MappedTensor(target)]


def _weight_mapper(gguf_per_layer: dict[str, str]):
    def weight_mapper(config: PhiConfig, fmt: str):
        fused = _fused_parts(config)
        num_experts = config.num_local_experts

        def map_hf(name: str) -> list[MappedTensor]:
            if "rotary_emb" in name:
                return []
            return hf_moe_tensor(name, num_experts) or _split_fused(_hf_name(name), fused)

        def map_gguf(name: str) -> list[MappedTensor]:
            if name in _GGUF_ROPE_FACTORS:
                return [MappedTensor(_GGUF_ROPE_FACTORS[name])]
            target = llama_style_name(name, gguf_per_layer)
            if target is None:
                return []
            if "_exps." in name:
                return [MappedTensor(target, all_experts(num_experts))]
            return _split_fused(target, fused)

        return map_hf if fmt == "hf" else map_gguf

    return weight_mapper


build_phi3 = lazy("mistralrs_arch_phi.model:build_phi3")

PHI2 = Architecture(
    name="Phi2",
    parse_config=lazy("mistralrs_arch_phi.config:parse_phi2"),
    weight_mapper=_weight_mapper(_GGUF_PHI2),
    build_model=lazy("mistralrs_arch_phi.model:build_phi2"),
    hf_architectures=("PhiForCausalLM",),
    gguf_architectures=("phi2",),
    description="Phi-2, Phi-1.5, Phi-1: parallel attention and MLP, partial rotary, biases",
)
PHI3 = Architecture(
    name="Phi3",
    parse_config=lazy("mistralrs_arch_phi.config:parse_phi3"),
    weight_mapper=_weight_mapper(_GGUF_PHI3),
    build_model=build_phi3,
    hf_architectures=("Phi3ForCausalLM",),
    gguf_architectures=("phi3",),
    description="Phi-3, Phi-3.5, Phi-4 dense: fused projections, longrope (128k models)",
)
PHI3_5_MOE = Architecture(
    name="Phi3_5MoE",
    parse_config=lazy("mistralrs_arch_phi.config:parse_phimoe"),
    weight_mapper=_weight_mapper(_GGUF_PHI3),
    build_model=build_phi3,
    hf_architectures=("PhiMoEForCausalLM", "PhimoeForCausalLM"),
    gguf_architectures=("phimoe",),
    description="Phi-3.5-MoE: 16 experts, sparsemixer top-2 routing, LayerNorm, biases",
)


@hookimpl
def register_architectures(register):
    for architecture in (PHI2, PHI3, PHI3_5_MOE):
        register(architecture)
