"""The embedded default model, SmolLM2-135M-Instruct Q4_1, against llama.cpp's golden outputs."""
from __future__ import annotations

import pytest
import torch

from mistralrs import ChatCompletionRequest, Runner, Which
from mistralrs.default_model import default_model_path
from mistralrs.loading.model_loader import load_gguf
from golden import golden, teacher_forced_agreement

GOLDEN = golden("SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def loaded():
    path = default_model_path()
    return load_gguf(str(path.parent), path.name, dtype=torch.float32,
                     device=torch.device("cpu"), progress=False)


def test_tokenizer_matches_llama_cpp(loaded):
    for case in GOLDEN["tokenize"]:
        assert loaded.tokenizer.encode(case["text"], parse_special=False) == case["ids"], case["text"]
        assert loaded.tokenizer.encode(case["text"], parse_special=True) == \
            case["ids_parse_special"], case["text"]


def test_teacher_forced_greedy_agreement_with_llama_cpp(loaded):
    assert teacher_forced_agreement(loaded, GOLDEN["greedy"]) >= 0.95


def test_the_int8_kv_cache_agrees_with_llama_cpp_too(loaded):
    """llama.cpp's float16 cache against ours of 8 bits: the quantization moves few argmaxes
    (here 97.5% against 97.9% with the float16 cache)."""
    assert teacher_forced_agreement(loaded, GOLDEN["greedy"], kv_cache_dtype="int8") >= 0.95


def test_runner_answers_capital_of_germany():
    path = default_model_path()
    runner = Runner(Which.GGUF(quantized_model_id=str(path.parent),
                               quantized_filename=path.name), progress=False)
    try:
        res = runner.send_chat_completion_request(ChatCompletionRequest(
            messages=[{"role": "user", "content": "What is the capital of Germany?"}],
            max_tokens=32, temperature=0))
    finally:
        runner.shutdown()
    assert "Berlin" in res.choices[0].message.content
    assert res.choices[0].finish_reason in ("stop", "length")
    assert res.usage.prompt_tokens > 0 and res.usage.completion_tokens > 0
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    assert res.usage.avg_compl_tok_per_sec > 0
