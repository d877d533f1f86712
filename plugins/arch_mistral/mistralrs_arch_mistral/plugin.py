"""Registers Mistral and Mixtral with mistralrs (entry point `mistralrs.architectures`).

GGUF: llama.cpp writes both as `llama`. Dense files (Mistral's too; llama.cpp drops the
sliding window) are the Llama plugin's; this plugin claims the `llama` files that have experts,
through `Architecture.gguf_matches`.
"""
from __future__ import annotations

from mistralrs.loading.gguf_names import llama_style_mapper, rotary_unpermutes
from mistralrs.loading.moe_names import GGUF_MOE_NAMES, all_experts, hf_moe_tensor
from typing import TYPE_CHECKING

from mistralrs.plugins import Architecture, MappedTensor, hookimpl, lazy

if TYPE_CHECKING:
    from mistralrs_arch_mistral.config import MistralConfig

def weight_mapper(config: MistralConfig, fmt: str):
    num_experts = config.num_local_experts
    if fmt == "hf":
        def map_hf(name: str):
            if "rotary_emb" in name:
                return []
            return hf_moe_tensor(name, num_experts) or [MappedTensor(name)]
        return map_hf

    transforms = {
        **rotary_unpermutes(config.num_attention_heads, config.num_key_value_heads),
        **{stem: all_experts(num_experts) for stem in GGUF_MOE_NAMES if stem.endswith("_exps")},
    }
    return llama_style_mapper(GGUF_MOE_NAMES, transforms.get)


parse_config = lazy("mistralrs_arch_mistral.config:parse_config")
build_model = lazy("mistralrs_arch_mistral.model:build_model")

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
    gguf_matches=lazy("mistralrs_arch_mistral.config:is_mixtral_gguf"),
    description="Mixtral sparse mixture-of-experts models (top-k routed experts)",
)


@hookimpl
def register_architectures(register):
    register(MISTRAL)
    register(MIXTRAL)
