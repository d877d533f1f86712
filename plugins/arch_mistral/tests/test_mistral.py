"""The Mistral and Mixtral plugin against transformers' MistralForCausalLM and
MixtralForCausalLM on tiny random configs (fp32): Mistral with a sliding window (8) shorter than
the sequences (40 tokens) and a head size other than hidden / heads (as Mistral NeMo), Mixtral
with 4 experts, top-2."""
from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM

from mistralrs.engine.scoring import score
from mistralrs.errors import ModelFormatError
from mistralrs.loading.model_loader import load_plain
from mistralrs_arch_mistral.config import parse_config
from hf_reference import check_greedy_matches_generate, incremental_reference
from tiny_models import save_hf_model

ARCHS = ["Mistral", "Mixtral"]
NUM_EXPERTS = 4


def tiny_model(tmp_path, arch: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  eos_token_id=257, bos_token_id=256)
    if arch == "Mistral":
        model = MistralForCausalLM(MistralConfig(**common, head_dim=32, sliding_window=8))
    else:
        model = MixtralForCausalLM(MixtralConfig(**common, num_local_experts=NUM_EXPERTS,
                                                 num_experts_per_tok=2))
    return model.eval(), save_hf_model(model, tmp_path / arch)



@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_on_prefill_and_cached_decode(tmp_path, arch):
    reference, path = tiny_model(tmp_path, arch)
    loaded = load_plain(str(path), dtype=torch.float32, device=torch.device("cpu"), progress=False)
    assert loaded.architecture.name == arch
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        out = reference(torch.tensor([ids]), output_router_logits=arch == "Mixtral")
    if arch == "Mixtral":  # every layer routes the tokens to all of its experts
        for router_logits in out.router_logits:
            assert router_logits.topk(2).indices.unique().numel() == NUM_EXPERTS
    assert (score(loaded, ids) - out.logits[0]).abs().max().item() < 1e-4
    decode = score(loaded, ids, chunks=[24] + [1] * 16)
    assert (decode[24:] - incremental_reference(reference, ids, 24)).abs().max().item() < 1e-4


def test_sliding_window_changes_the_logits(tmp_path):
    """The window matters at this length: without it transformers' logits differ."""
    reference, _ = tiny_model(tmp_path, "Mistral")
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        windowed = reference(torch.tensor([ids])).logits[0]
        reference.config.sliding_window = None
        full = reference(torch.tensor([ids])).logits[0]
    assert (windowed[8:] - full[8:]).abs().max().item() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_matches_transformers_generate(tmp_path, arch):
    reference, path = tiny_model(tmp_path, arch, seed=3)
    check_greedy_matches_generate(reference, path)


@pytest.mark.parametrize("raw, fmt", [
    ({"architectures": ["MixtralForCausalLM"], "vocab_size": 8, "hidden_size": 8,
      "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
      "num_local_experts": 4, "num_experts_per_tok": 5}, "hf"),
    ({"vocab_size": 8, "embedding_length": 8, "feed_forward_length": 8, "block_count": 1,
      "attention.head_count": 2, "expert_count": 4}, "gguf"),
], ids=["top_k_above_experts", "gguf_without_expert_used_count"])
def test_inconsistent_expert_configs_are_clear_errors(raw, fmt):
    with pytest.raises(ModelFormatError, match="expert"):
        parse_config(raw, fmt)
