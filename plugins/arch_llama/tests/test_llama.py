"""The Llama plugin against transformers' LlamaForCausalLM on tiny random configs (fp32)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mistralrs.engine.scoring import score
from mistralrs.loading.model_loader import load_plain
from hf_reference import check_greedy_matches_generate, incremental_reference
from tiny_models import save_hf_model

ROPE_VARIANTS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
}


def tiny_llama(tmp_path, tie: bool, rope: str, seed: int = 0, max_positions: int = 32):
    torch.manual_seed(seed)
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    if ROPE_VARIANTS[rope]:
        rope_parameters = {**ROPE_VARIANTS[rope], "rope_theta": 10000.0}
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, tie_word_embeddings=tie,
                         rope_parameters=rope_parameters, eos_token_id=257, bos_token_id=256)
    model = LlamaForCausalLM(config).eval()
    return model, save_hf_model(model, tmp_path / f"llama-{tie}-{rope}")


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("rope", list(ROPE_VARIANTS))
def test_logits_match_transformers_on_prefill_and_cached_decode(tmp_path, tie, rope):
    reference, path = tiny_llama(tmp_path, tie, rope)
    loaded = load_plain(str(path), dtype=torch.float32, device=torch.device("cpu"), progress=False)
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    prefill = score(loaded, ids)
    assert (prefill - expected).abs().max().item() < 1e-4
    decode = score(loaded, ids, chunks=[24] + [1] * 16)
    assert (decode[24:] - incremental_reference(reference, ids, 24)).abs().max().item() < 1e-4



@pytest.mark.parametrize("tie", [True, False])
def test_greedy_generation_matches_transformers_generate(tmp_path, tie):
    reference, path = tiny_llama(tmp_path, tie, "default", seed=3, max_positions=64)
    check_greedy_matches_generate(reference, path)
