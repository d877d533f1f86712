"""Registers Mistral and Mixtral with mistralrs (entry point `mistralrs.architectures`).

GGUF: llama.cpp writes both as `llama`. Dense files (Mistral's too; llama.cpp drops the
sliding window) are the Llama plugin's; this plugin claims the `llama` files that have experts,
through `Architecture.gguf_matches`.
"""
from __future__ import annotations

import re

from mistralrs.layers import expert_slice
from mistralrs.loading.gguf_names import llama_style_mapper, rotary_unpermutes
from mistralrs.plugins import Architecture, MappedTensor, hookimpl
from mistralrs_arch_mistral.config import MistralConfig, is_mixtral_gguf, parse_config
from mistralrs_arch_mistral.model import build_model

# Mixtral checkpoints: model.layers.N.block_sparse_moe.{gate, experts.E.w1/w2/w3}.weight
_HF_MOE = re.compile(
    r"(model\.layers\.\d+)\.block_sparse_moe\.(gate|experts\.(\d+)\.(w[123]))\.weight$")
_HF_EXPERT_PROJECTIONS = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}

_GGUF_MOE = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}


def weight_mapper(config: MistralConfig, fmt: str):
    num_experts = config.num_local_experts
    if fmt == "hf":
        def map_hf(name: str):
            if "rotary_emb" in name:
                return []
            match = _HF_MOE.match(name)
            if match is None:
                return [MappedTensor(name)]
            layer, _, expert, projection = match.groups()
            if expert is None:
                return [MappedTensor(f"{layer}.mlp.gate.weight")]
            target = f"{layer}.mlp.experts.{_HF_EXPERT_PROJECTIONS[projection]}.weight"
            return [MappedTensor(target, expert_slice(int(expert), 1, num_experts))]
        return map_hf

    transforms = {
        **rotary_unpermutes(config.num_attention_heads, config.num_key_value_heads),
        **{stem: expert_slice(0, num_experts, num_experts)
           for stem in _GGUF_MOE if stem.endswith("_exps")},
    }
    return llama_style_mapper(_GGUF_MOE, transforms.get)


MISTRAL = Architecture(
    name="Mistral",
    parse_config=parse_config,
    weight_mapper=weight_mapper,
    build_model=build_model,
    hf_architectures=("MistralForCausalLM",),
    description="Mistral 7B, Mistral NeMo and compatible dense models (sliding-window attention)",
)

MIXTRAL = Architecture(
    name="Mixtral",
    parse_config=parse_config,
    weight_mapper=weight_mapper,
    build_model=build_model,
    hf_architectures=("MixtralForCausalLM",),
    gguf_architectures=("llama",),
    gguf_matches=is_mixtral_gguf,
    description="Mixtral sparse mixture-of-experts models (top-k routed experts)",
)


@hookimpl
def register_architectures(register):
    register(MISTRAL)
    register(MIXTRAL)
