"""Registers Starcoder2 with mistralrs (entry point `mistralrs.architectures`)."""
from __future__ import annotations

from mistralrs.loading.gguf_names import llama_style_mapper
from typing import TYPE_CHECKING

from mistralrs.plugins import Architecture, MappedTensor, hookimpl, lazy

if TYPE_CHECKING:
    from mistralrs_arch_starcoder.config import Starcoder2Config

# Hugging Face's names for the plain MLP -> the core `MLP`'s (llama.cpp's ffn_up / ffn_down).
_HF_MLP_NAMES = {".mlp.c_fc.": ".mlp.up_proj.", ".mlp.c_proj.": ".mlp.down_proj."}


def _hf_name(name: str) -> str:
    for theirs, ours in _HF_MLP_NAMES.items():
        name = name.replace(theirs, ours)
    return name


def weight_mapper(config: Starcoder2Config, fmt: str):
    """llama.cpp runs Starcoder2 with NEOX (rotate-half) rope, so its converter leaves q/k rows
    in Hugging Face order: no un-permuting."""
    if fmt == "hf":
        return lambda name: [MappedTensor(_hf_name(name))]
    return llama_style_mapper()


STARCODER2 = Architecture(
    name="Starcoder2",
    parse_config=lazy("mistralrs_arch_starcoder.config:parse_config"),
    weight_mapper=weight_mapper,
    build_model=lazy("mistralrs_arch_starcoder.model:build_model"),
    hf_architectures=("Starcoder2ForCausalLM",),
    gguf_architectures=("starcoder2",),
    description="StarCoder2: LayerNorm, biased projections, gelu MLP, sliding window",
)


@hookimpl
def register_architectures(register):
    register(STARCODER2)
