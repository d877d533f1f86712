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
from mistralrs.engine.scoring import score
from mistralrs.errors import ArchitectureNotFoundError
from mistralrs.loading.model_loader import load_gguf, load_plain
from mistralrs.plugins import PluginRegistry
from mistralrs_arch_mistral import plugin as mistral_plugin
from tiny_models import save_hf_model

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
    options = dict(dtype=torch.float32, device=torch.device("cpu"), progress=False)
    safetensors = load_plain(str(save_hf_model(model, tmp_path / "hf")), **options)
    gguf = load_gguf(str(tmp_path), gguf_path.name, **options)
    assert gguf.architecture.name == loads_as

    ids = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    ours = score(gguf, ids, chunks=[20] + [1] * 10)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
    assert (ours - score(safetensors, ids)).abs().max().item() < 1e-4
    assert (ours - expected).abs().max().item() < 1e-4


def test_only_llama_files_with_experts_are_claimed_by_mixtral():
    registry = PluginRegistry(load_entry_points=False)
    registry.register_plugin(mistral_plugin)
    assert registry.for_gguf("llama", {"expert_count": 8}).name == "Mixtral"
    with pytest.raises(ArchitectureNotFoundError, match="pip install mistralrs-arch-llama"):
        registry.for_gguf("llama", {"block_count": 2})
