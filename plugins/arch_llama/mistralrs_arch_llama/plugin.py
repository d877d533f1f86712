"""Registers the Llama architecture with mistralrs (entry point `mistralrs.architectures`)."""
from __future__ import annotations

from mistralrs.loading.gguf_names import llama_style_name, unpermute_rotary_rows
from mistralrs.plugins import Architecture, MappedTensor, hookimpl
from mistralrs_arch_llama.config import LlamaConfig, parse_config
from mistralrs_arch_llama.model import build_model


def weight_mapper(config: LlamaConfig, fmt: str):
    if fmt == "hf":
        def map_hf(name: str):
            if "rotary_emb" in name:
                return []
            return [MappedTensor(name)]
        return map_hf

    rotary_rows = {
        "attn_q": unpermute_rotary_rows(config.num_attention_heads),
        "attn_k": unpermute_rotary_rows(config.num_key_value_heads),
    }

    def map_gguf(name: str):
        target = llama_style_name(name)
        if target is None:
            return []
        stem = name.split(".")[-2]
        return [MappedTensor(target, rotary_rows.get(stem))]

    return map_gguf


LLAMA = Architecture(
    name="Llama",
    parse_config=parse_config,
    weight_mapper=weight_mapper,
    build_model=build_model,
    hf_architectures=("LlamaForCausalLM",),
    gguf_architectures=("llama",),
    description="Llama 1/2/3 and compatible (SmolLM, TinyLlama, Mistral-style dense models)",
)


@hookimpl
def register_architectures(register):
    register(LLAMA)
