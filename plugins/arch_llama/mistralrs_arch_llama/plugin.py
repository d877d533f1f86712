"""Registers the Llama architecture with mistralrs (entry point `mistralrs.architectures`)."""
from __future__ import annotations

from mistralrs.loading.gguf_names import llama_style_mapper, rotary_unpermutes
from typing import TYPE_CHECKING

from mistralrs.plugins import Architecture, MappedTensor, hookimpl, lazy

if TYPE_CHECKING:
    from mistralrs_arch_llama.config import LlamaConfig


def weight_mapper(config: LlamaConfig, fmt: str):
    if fmt == "hf":
        return lambda name: [] if "rotary_emb" in name else [MappedTensor(name)]
    rotary = rotary_unpermutes(config.num_attention_heads, config.num_key_value_heads)
    return llama_style_mapper(transform_for=rotary.get)


LLAMA = Architecture(
    name="Llama",
    parse_config=lazy("mistralrs_arch_llama.config:parse_config"),
    weight_mapper=weight_mapper,
    build_model=lazy("mistralrs_arch_llama.model:build_model"),
    hf_architectures=("LlamaForCausalLM",),
    gguf_architectures=("llama",),
    description="Llama 1/2/3 and compatible (SmolLM, TinyLlama, Mistral-style dense models)",
)


@hookimpl
def register_architectures(register):
    register(LLAMA)
