"""Registers DeepSeek-V2 and DeepSeek-V3 with mistralrs (entry point `mistralrs.architectures`).

Both formats load through one mapping from Hugging Face names: GGUF names are first translated
to them (`attn_kv_a_mqa` -> `kv_a_proj_with_mqa`, ...), llama.cpp's stacked experts and its
split `attn_k_b` / `attn_v_b` included. Hugging Face checkpoints of V3 carry the multi-token
prediction layers past `num_hidden_layers`; generation does not use them.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from mistralrs.kernels.gguf import dequantize
from mistralrs.kernels.gguf.packed import QuantizedTensor
from mistralrs.layers import expert_slice
from mistralrs.loading.gguf_names import llama_style_name
from mistralrs.plugins import Architecture, MappedTensor, hookimpl, lazy

if TYPE_CHECKING:
    from mistralrs_arch_deepseek.config import DeepseekConfig

_GGUF_PER_LAYER = {
    "attn_q_a": "self_attn.q_a_proj",
    "attn_q_a_norm": "self_attn.q_a_layernorm",
    "attn_q_b": "self_attn.q_b_proj",
    "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm",
    "attn_kv_b": "self_attn.kv_b_proj",
    "attn_k_b": "self_attn.k_b_proj",
    "attn_v_b": "self_attn.v_b_proj",
    "ffn_gate_inp": "mlp.gate",
    "exp_probs_b": "mlp.gate.e_score_correction",  # + `.bias`: HF's `e_score_correction_bias`
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
}

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"mlp\.experts\.(?:(\d+)\.)?(gate_proj|up_proj|down_proj)\.weight$")


def _dense(tensor: torch.Tensor | QuantizedTensor) -> torch.Tensor:
    if isinstance(tensor, QuantizedTensor):
        return dequantize(tensor.packed, tensor.qtype)
    return tensor


def _reshaped(*shape: int):
    return lambda tensor: _dense(tensor).reshape(shape)


def _kv_b_half(config: DeepseekConfig, key: bool):
    """`kv_b_proj` [H * (dn + dv), r] -> `key_up` [H, r, dn] or `value_up` [H, dv, r]."""
    heads, dn = config.num_attention_heads, config.qk_nope_head_dim

    def transform(tensor):
        per_head = _dense(tensor).reshape(heads, dn + config.v_head_dim, config.kv_lora_rank)
        return (per_head[:, :dn].transpose(1, 2) if key else per_head[:, dn:]).contiguous()

    return transform


def _rope_rows_to_halves(num_heads: int, rows_before: int, rope_dim: int):
    """Reorders each head's last `rope_dim` rows (after `rows_before` others) from DeepSeek's
    adjacent rotary pairs (x0, x1), (x2, x3), ... to rotate-half order (x0, x2, ..., x1, x3,
    ...). Applied to both queries and keys, it leaves q . k unchanged. Works on packed rows."""
    head = torch.cat([torch.arange(rows_before),
                      rows_before + torch.arange(0, rope_dim, 2),
                      rows_before + torch.arange(1, rope_dim, 2)])
    order = (torch.arange(num_heads)[:, None] * (rows_before + rope_dim) + head).reshape(-1)

    def transform(tensor):
        return tensor.rows(order) if isinstance(tensor, QuantizedTensor) else tensor[order]

    return transform


def _layer_targets(config: DeepseekConfig, prefix: str, name: str) -> list[MappedTensor]:
    """Where the tensor `name` of layer `prefix` (Hugging Face naming) goes."""
    heads, r, dr = config.num_attention_heads, config.kv_lora_rank, config.qk_rope_head_dim
    if "rotary_emb" in name:  # recomputed, not loaded
        return []
    if name == "self_attn.kv_b_proj.weight":
        return [MappedTensor(prefix + "self_attn.key_up", _kv_b_half(config, key=True)),
                MappedTensor(prefix + "self_attn.value_up", _kv_b_half(config, key=False))]
    if name == "self_attn.k_b_proj.weight":
        return [MappedTensor(prefix + "self_attn.key_up",
                             _reshaped(heads, r, config.qk_nope_head_dim))]
    if name == "self_attn.v_b_proj.weight":
        return [MappedTensor(prefix + "self_attn.value_up", _reshaped(heads, config.v_head_dim, r))]
    if name in ("mlp.gate.e_score_correction_bias", "mlp.gate.e_score_correction.bias"):
        return [MappedTensor(prefix + "mlp.routing.e_score_correction_bias")]
    if match := _EXPERT.match(name):
        expert, projection = match.groups()
        first, count = (0, config.num_experts) if expert is None else (int(expert), 1)
        return [MappedTensor(f"{prefix}mlp.experts.{projection}.weight",
                             expert_slice(first, count, config.num_experts))]
    transform = None
    if config.rope_interleaved and name in ("self_attn.q_proj.weight", "self_attn.q_b_proj.weight"):
        transform = _rope_rows_to_halves(heads, config.qk_nope_head_dim, dr)
    elif config.rope_interleaved and name.startswith("self_attn.kv_a_proj_with_mqa."):
        transform = _rope_rows_to_halves(1, r, dr)
    return [MappedTensor(prefix + name, transform)]


def weight_mapper(config: DeepseekConfig, fmt: str):
    def map_name(name: str) -> list[MappedTensor]:
        if fmt == "gguf":
            name = llama_style_name(name, _GGUF_PER_LAYER)
            if name is None:
                return []
        match = _LAYER.match(name)
        if match is None:
            return [MappedTensor(name)]
        layer, rest = match.groups()
        if int(layer) >= config.num_hidden_layers:  # multi-token prediction layers
            return []
        return _layer_targets(config, f"model.layers.{layer}.", rest)

    return map_name


build_model = lazy("mistralrs_arch_deepseek.model:build_model")

DEEPSEEK_V2 = Architecture(
    name="DeepseekV2",
    parse_config=lazy("mistralrs_arch_deepseek.config:parse_deepseek_v2"),
    weight_mapper=weight_mapper,
    build_model=build_model,
    hf_architectures=("DeepseekV2ForCausalLM",),
    gguf_architectures=("deepseek2",),
    description="DeepSeek-V2, V2-Lite, V2.5, Coder-V2: latent attention, softmax-routed MoE",
)
DEEPSEEK_V3 = Architecture(
    name="DeepseekV3",
    parse_config=lazy("mistralrs_arch_deepseek.config:parse_deepseek_v3"),
    weight_mapper=weight_mapper,
    build_model=build_model,
    hf_architectures=("DeepseekV3ForCausalLM",),
    gguf_architectures=("deepseek2",),
    gguf_matches=lazy("mistralrs_arch_deepseek.config:is_deepseek_v3_gguf"),
    description="DeepSeek-V3 and R1: latent attention, sigmoid-routed MoE with correction bias",
)


@hookimpl
def register_architectures(register):
    register(DEEPSEEK_V2)
    register(DEEPSEEK_V3)
