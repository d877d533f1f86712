"""The Starcoder2 plugin against transformers' Starcoder2ForCausalLM on tiny random configs
(fp32, GQA, a sliding window shorter than the sequences): safetensors checkpoints, and GGUF
files written by gguf-py."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import Starcoder2Config, Starcoder2ForCausalLM

from mistralrs import CompletionRequest, Runner, Which
from mistralrs.engine.scoring import score
from mistralrs.loading.model_loader import load_gguf
from gguf_writer import write_neox_rope_gguf
from tiny_models import save_hf_model

TINY_CONFIGS = {
    # The published checkpoints' shape: biases everywhere, tied embeddings, a sliding window.
    "starcoder2": dict(sliding_window=8),
    "starcoder2-untied-unbiased": dict(use_bias=False, tie_word_embeddings=False,
                                       rope_parameters={"rope_type": "default",
                                                        "rope_theta": 1000.0}),
}


def tiny_starcoder2(kind: str) -> Starcoder2ForCausalLM:
    """A random model whose every weight is far from its initial value (biases start at 0 and
    norm weights at 1, which would hide a missing bias or norm)."""
    torch.manual_seed(0)
    config = Starcoder2Config(vocab_size=300, hidden_size=64, intermediate_size=96,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=128, eos_token_id=257, bos_token_id=256,
                              **TINY_CONFIGS[kind])
    model = Starcoder2ForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_matches_transformers_on_prefill_cached_decode_and_greedy_generation(tmp_path, kind):
    """transformers' `generate` feeds its tokens one at a time through its KV cache; its logits
    at each step are the oracle for our cached decode steps, its tokens for our greedy run."""
    reference = tiny_starcoder2(kind)
    path = save_hf_model(reference, tmp_path / kind)
    prompt = [256] + random_ids(11, seed=1)
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
    generated = out.sequences[0, len(prompt):].tolist()
    ids = prompt + generated
    with torch.no_grad():
        full = reference(torch.tensor([ids])).logits[0]

    runner = Runner(Which.Plain(model_id=str(path)), progress=False)
    try:
        assert runner.loaded.architecture.name == "Starcoder2"
        assert max_diff(score(runner.loaded, ids), full) < 1e-4
        assert max_diff(score(runner.loaded, ids, chunks=[13, 17, len(ids) - 30]), full) < 1e-4
        steps = score(runner.loaded, ids[:-1], chunks=[len(prompt)] + [1] * (len(generated) - 1))
        assert max_diff(steps[len(prompt) - 1:], torch.cat(out.logits)) < 1e-4
        greedy = runner.engine.submit(prompt, CompletionRequest(
            prompt, max_tokens=32, temperature=0).sampling_params()).result()
    finally:
        runner.shutdown()
    assert greedy.choices[0].token_ids == generated


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
