"""The older loader API of seed 000, over the same engine."""
from __future__ import annotations

import json

import pytest

from mistralrs import (
    CompletionRequest,
    InvalidRequestError,
    LlamaLoader,
    MistralLoader,
    ModelKind,
    NormalLoader,
    QuantizedLoader,
    Request,
    Runner,
    Which,
    XLoraLoader,
)
from mistralrs.default_model import default_model_path
from tiny_models import save_hf_model, tiny_llama


def test_seed_example_with_a_local_gguf(tmp_path):
    path = default_model_path()
    kind = ModelKind.QuantizedGGUF
    loader = MistralLoader(
        model_id=str(path.parent),  # the seed's hub id, here the local directory
        kind=kind,
        no_kv_cache=False,
        repeat_last_n=64,
        quantized_model_id=str(path.parent),
        quantized_filename=path.name,
    )
    runner = loader.load(logfile=str(tmp_path / "log.jsonl"))
    try:
        res = runner.send_chat_completion_request(Request(
            model="mistral",
            messages=[{"role": "user", "content": "What is the capital of Germany?"}],
            max_tokens=24,
            repetition_penalty=1.0,
            top_p=0.1,
            temperature=0.1,
        ))
    finally:
        runner.shutdown()
    assert "Berlin" in res.choices[0].message.content
    logged = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert "capital of Germany" in logged["prompt"]
    assert logged["response"]["choices"][0]["message"]["content"] == res.choices[0].message.content


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_hf_model(tiny_llama(max_position_embeddings=64), tmp_path_factory.mktemp("m")))


def test_normal_loader_matches_the_runner_api(tiny_dir):
    request = CompletionRequest(prompt=[256, 72, 105], max_tokens=10, temperature=0)
    legacy = NormalLoader(LlamaLoader, model_id=tiny_dir).load(max_seqs=2)
    modern = Runner(Which.Plain(model_id=tiny_dir), progress=False)
    try:
        assert legacy.send_completion_request(request).choices[0].text == \
            modern.send_completion_request(request).choices[0].text
        assert legacy.engine.scheduler.max_seqs == 2
        with pytest.raises(InvalidRequestError, match="context"):
            legacy.send_completion_request(CompletionRequest(prompt=[65] * 80))
    finally:
        legacy.shutdown()
        modern.shutdown()


def test_truncate_sequence_keeps_the_end_of_a_long_prompt(tiny_dir):
    runner = LlamaLoader(model_id=tiny_dir).load(truncate_sequence=True)
    try:
        res = runner.send_completion_request(CompletionRequest(
            prompt=list(range(65, 91)) * 4, max_tokens=6, temperature=0))
        assert res.usage.prompt_tokens == 64 - 6
        assert res.usage.completion_tokens == 6
    finally:
        runner.shutdown()


def test_unsupported_kinds_say_so(tiny_dir):
    with pytest.raises(NotImplementedError, match="X-LoRA"):
        XLoraLoader(LlamaLoader, model_id=tiny_dir).load()
    with pytest.raises(NotImplementedError, match="GGUF"):
        QuantizedLoader(LlamaLoader, model_id=tiny_dir, is_gguf=False,
                        quantized_model_id=tiny_dir, quantized_filename="x.bin").load()
