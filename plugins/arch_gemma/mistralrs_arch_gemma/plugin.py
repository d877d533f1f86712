"""Registers Gemma, Gemma2 and Gemma3 with mistralrs (entry point `mistralrs.architectures`)."""
from __future__ import annotations

import torch

from mistralrs.loading.gguf_names import llama_style_mapper
from typing import TYPE_CHECKING

from mistralrs.plugins import Architecture, MappedTensor, hookimpl, lazy

if TYPE_CHECKING:
    from mistralrs_arch_gemma.config import GemmaConfig

# llama.cpp's names for the Gemma 2/3 norms around the MLP (`post_attention_norm` is already
# in the shared table). Gemma 1's `ffn_norm` keeps the llama meaning: the norm before the MLP,
# which Hugging Face calls `post_attention_layernorm`.
_SANDWICH_NORMS = {
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def _without_unit_offset(weight: torch.Tensor) -> torch.Tensor:
    """llama.cpp's converter stores every Gemma norm weight as 1 + w; our norms add the 1."""
    return weight.float() - 1.0


def weight_mapper(config: GemmaConfig, fmt: str):
    if fmt == "hf":
        return lambda name: [MappedTensor(name)]

    return llama_style_mapper(
        _SANDWICH_NORMS if config.sandwich_norms else None,
        lambda stem: _without_unit_offset if stem.endswith("norm") else None)


def _gemma_architecture(name: str, parse_config: str, hf: str, gguf: str, description: str):
    return Architecture(name=name,
                        parse_config=lazy(f"mistralrs_arch_gemma.config:{parse_config}"),
                        weight_mapper=weight_mapper,
                        build_model=lazy("mistralrs_arch_gemma.model:build_model"),
                        hf_architectures=(hf,), gguf_architectures=(gguf,),
                        description=description)


GEMMA = _gemma_architecture("Gemma", "parse_gemma", "GemmaForCausalLM", "gemma",
                            "Gemma (2B, 7B) and CodeGemma")
GEMMA2 = _gemma_architecture("Gemma2", "parse_gemma2", "Gemma2ForCausalLM", "gemma2",
                             "Gemma 2: sliding-window layers, soft-capping, sandwich norms")
GEMMA3 = _gemma_architecture("Gemma3", "parse_gemma3", "Gemma3ForCausalLM", "gemma3",
                             "Gemma 3 text: QK-norm, local/global rope bases, 5:1 sliding layers")


@hookimpl
def register_architectures(register):
    for architecture in (GEMMA, GEMMA2, GEMMA3):
        register(architecture)
