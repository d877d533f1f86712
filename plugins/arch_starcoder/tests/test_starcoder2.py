"""The Starcoder2 plugin against transformers' Starcoder2ForCausalLM on tiny random configs
(fp32, GQA, a sliding window shorter than the sequences): safetensors checkpoints, and GGUF
files written by gguf-py."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import Starcoder2Config, Starcoder2ForCausalLM

from mistralrs.engine.scoring import score
from mistralrs.loading.model_loader import load_gguf
from gguf_writer import write_neox_rope_gguf
from hf_reference import check_against_transformers, max_diff, perturb_weights, random_ids

TINY_CONFIGS = {
    # The published checkpoints' shape: biases everywhere, tied embeddings, a sliding window.
    "starcoder2": dict(sliding_window=8),
    "starcoder2-untied-unbiased": dict(use_bias=False, tie_word_embeddings=False,
                                       rope_parameters={"rope_type": "default",
                                                        "rope_theta": 1000.0}),
}


def tiny_starcoder2(kind: str) -> Starcoder2ForCausalLM:
    torch.manual_seed(0)
    config = Starcoder2Config(vocab_size=300, hidden_size=64, intermediate_size=96,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=128, eos_token_id=257, bos_token_id=256,
                              **TINY_CONFIGS[kind])
    return perturb_weights(Starcoder2ForCausalLM(config).eval())


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_matches_transformers_on_prefill_cached_decode_and_greedy_generation(tmp_path, kind):
    check_against_transformers(tiny_starcoder2(kind), tmp_path / kind, "Starcoder2")


@pytest.mark.usefixtures("reference_cpu_kernels")
def test_gguf_matches_dequantized_reference(tmp_path):
    """A GGUF file written as llama.cpp's converter does (q/k rows unpermuted, Q8_0 matrices,
    no output tensor), plus the sliding window, against transformers running the weights
    gguf-py dequantizes."""
    model = tiny_starcoder2("starcoder2")
    path = tmp_path / "starcoder2.gguf"
    model.load_state_dict(write_neox_rope_gguf(model, path, "starcoder2",
                                               GGMLQuantizationType.Q8_0))

    loaded = load_gguf(str(tmp_path), path.name, dtype=torch.float32,
                       device=torch.device("cpu"), progress=False)
    assert loaded.architecture.name == "Starcoder2"
    assert loaded.config.sliding_window == 8
    ids = random_ids(40, seed=2)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
    assert max_diff(score(loaded, ids, chunks=[20] + [1] * 20), expected) < 1e-4
