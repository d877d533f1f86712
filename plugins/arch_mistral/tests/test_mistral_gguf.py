"""Tiny Mixtral and Mistral models written as GGUF by gguf-py the way llama.cpp's converter does
(`llama` architecture, tensor names from `gguf.TensorNameMap`; F32 and Q8_0) against the same
weights, as gguf-py dequantizes them, loaded from safetensors and run by transformers.

A Mixtral file (it has `expert_count`) loads as Mixtral; a Mistral file is an ordinary `llama`
file, which the Llama plugin loads (llama.cpp keeps no sliding window for it, so the window here
is longer than the sequence)."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM

from gguf_writer import write_llama_gguf
from mistralrs.errors import ArchitectureNotFoundError
from mistralrs.plugins import PluginRegistry
from mistralrs_arch_mistral import plugin as mistral_plugin
from hf_reference import check_gguf_against_safetensors

COMMON = dict(vocab_size=288, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              eos_token_id=257, bos_token_id=256)
MODELS = {
    "Mixtral": lambda: MixtralForCausalLM(MixtralConfig(**COMMON, num_local_experts=4,
                                                        num_experts_per_tok=2)),
    "Llama": lambda: MistralForCausalLM(MistralConfig(**COMMON, sliding_window=64)),
}


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0],
                         ids=lambda q: q.name)
@pytest.mark.parametrize("loads_as", list(MODELS), ids=["mixtral", "mistral"])
def test_gguf_matches_safetensors_path_and_transformers(tmp_path, loads_as, qtype):
    torch.manual_seed(0)
    model = MODELS[loads_as]().eval()
    gguf_path = tmp_path / "tiny.gguf"
    model.load_state_dict(write_llama_gguf(model, gguf_path, qtype))
    check_gguf_against_safetensors(model, tmp_path, gguf_path.name, loads_as, tmp_path / "hf")


def test_only_llama_files_with_experts_are_claimed_by_mixtral():
    registry = PluginRegistry(load_entry_points=False)
    registry.register_plugin(mistral_plugin)
    assert registry.for_gguf("llama", {"expert_count": 8}).name == "Mixtral"
    with pytest.raises(ArchitectureNotFoundError, match="pip install mistralrs-arch-llama"):
        registry.for_gguf("llama", {"block_count": 2})
