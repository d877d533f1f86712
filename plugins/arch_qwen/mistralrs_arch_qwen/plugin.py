"""Registers Qwen2 and Qwen3 with mistralrs (entry point `mistralrs.architectures`)."""
from __future__ import annotations

from mistralrs.loading.gguf_names import llama_style_mapper
from typing import TYPE_CHECKING

from mistralrs.plugins import Architecture, MappedTensor, hookimpl, lazy

if TYPE_CHECKING:
    from mistralrs_arch_qwen.config import QwenConfig


def weight_mapper(config: QwenConfig, fmt: str):
    """Hugging Face names are the model's own. llama.cpp runs Qwen with NEOX (rotate-half)
    rope, so its converter leaves q/k rows in Hugging Face order: no un-permuting."""
    if fmt == "hf":
        return lambda name: [MappedTensor(name)]
    return llama_style_mapper()


build_model = lazy("mistralrs_arch_qwen.model:build_model")

QWEN2 = Architecture(
    name="Qwen2",
    parse_config=lazy("mistralrs_arch_qwen.config:parse_qwen2"),
    weight_mapper=weight_mapper,
    build_model=build_model,
    hf_architectures=("Qwen2ForCausalLM",),
    gguf_architectures=("qwen2",),
    description="Qwen2 and Qwen2.5: biased q/k/v, optional sliding-window layers",
)
QWEN3 = Architecture(
    name="Qwen3",
    parse_config=lazy("mistralrs_arch_qwen.config:parse_qwen3"),
    weight_mapper=weight_mapper,
    build_model=build_model,
    hf_architectures=("Qwen3ForCausalLM",),
    gguf_architectures=("qwen3",),
    description="Qwen3 dense: QK-norm, explicit head size",
)


@hookimpl
def register_architectures(register):
    for architecture in (QWEN2, QWEN3):
        register(architecture)
