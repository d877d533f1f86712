"""The official `openai` client against a real `mistralrs serve` process with the embedded
SmolLM2-135M-Instruct model, greedy."""
from __future__ import annotations

import openai
import pytest

from server_harness import serve_process

QUESTION = [{"role": "user", "content": "What is the capital of Germany?"}]


@pytest.fixture(scope="module")
def client():
    with serve_process("--max-tokens-limit", "32") as (_, url):
        with openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0,
                           timeout=120) as client:
            yield client


def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert models[0].object == "model" and models[0].owned_by == "local"


def test_chat(client):
    res = client.chat.completions.create(model="", messages=QUESTION, temperature=0,
                                         max_tokens=16)
    assert res.object == "chat.completion"
    assert res.id and res.created > 0 and res.system_fingerprint
    assert res.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "Berlin" in res.choices[0].message.content
    assert res.choices[0].message.role == "assistant"
    assert res.choices[0].finish_reason in ("stop", "length")
    usage = res.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.model_extra["avg_compl_tok_per_sec"] > 0  # the seed's timing figures


def test_chat_streaming(client):
    stream = client.chat.completions.create(model="", messages=QUESTION, temperature=0,
                                            max_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Berlin" in text
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(finishes)


def test_completion(client):
    res = client.completions.create(model="smollm2", prompt="The capital of Germany is",
                                    temperature=0, max_tokens=4)
    assert res.object == "text_completion"
    assert "Berlin" in res.choices[0].text
    assert res.usage.completion_tokens == 4 and res.choices[0].finish_reason == "length"


def test_completion_streaming(client):
    stream = client.completions.create(model="smollm2", prompt="The capital of Germany is",
                                       temperature=0, max_tokens=4, stream=True)
    chunks = list(stream)
    assert "Berlin" in "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # no usage chunk unless include_usage


def test_errors_reach_the_client_as_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="", messages=QUESTION, max_tokens=1000)
    assert error.value.body["param"] == "max_tokens" and "32" in error.value.body["message"]
