"""Many streaming clients on a real loopback socket, some leaving mid-stream, and the queue
limit: streams stay well-formed, disconnects cancel their requests, and the engine ends idle
with every KV block free (as /metrics reports)."""
from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk
from prometheus_client.parser import text_string_to_metric_families

from server_harness import TINY_EOS, live_server, tiny_app

CLIENTS = 32
MAX_TOKENS = 128


def chat_body(i: int, max_tokens: int) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": f"client {i}"}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "stream": True,
            "logit_bias": {str(TINY_EOS): -100}, "stream_options": {"include_usage": True}}


async def stream(http: httpx.AsyncClient, url: str, body: dict,
                 leave_after: int | None) -> list[str] | None:
    """The `data:` payloads of one stream, or None when the client leaves after `leave_after`
    of them (closing the response drops the connection)."""
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = []
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if leave_after is not None and len(events) == leave_after:
                    return None
    return events


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if not s.labels}


def assert_well_formed(events: list[str]) -> None:
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *deltas, usage = chunks
    for chunk in deltas:
        ChatCompletionChunk.model_validate(chunk)  # the official client's own type
    finishes = [d["choices"][0]["finish_reason"] for d in deltas]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert len(deltas) == MAX_TOKENS
    assert usage["choices"] == []
    assert CompletionUsage.model_validate(usage["usage"]).completion_tokens == MAX_TOKENS


def test_concurrent_streams_with_disconnects(tiny_runner, monkeypatch):
    handles = []
    submit = tiny_runner.engine.submit

    def recording_submit(prompt_ids, params):
        handle = submit(prompt_ids, params)
        handles.append(handle)
        return handle

    monkeypatch.setattr(tiny_runner.engine, "submit", recording_submit)
    rng = random.Random(1234)
    leave_after = [rng.randint(1, 16) if i % 3 == 0 else None for i in range(CLIENTS)]
    leaving = sum(n is not None for n in leave_after)

    with live_server(tiny_app(tiny_runner)) as url:
        async def all_clients():
            async with httpx.AsyncClient(timeout=120,
                                         limits=httpx.Limits(max_connections=CLIENTS)) as http:
                return await asyncio.gather(*(stream(http, url, chat_body(i, MAX_TOKENS), n)
                                              for i, n in enumerate(leave_after)))

        results = asyncio.run(all_clients())
        assert httpx.get(f"{url}/health").text == "OK"
        completed = [events for events in results if events is not None]
        assert len(completed) == CLIENTS - leaving
        for events in completed:
            assert_well_formed(events)

        deadline = time.monotonic() + 30
        while True:
            m = metrics(url)
            idle = (m["mistralrs_sequences_running"] == 0 and m["mistralrs_sequences_waiting"] == 0
                    and m["mistralrs_requests_in_flight"] == 0)
            if idle or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert idle, m
        assert m["mistralrs_kv_cache_free_blocks"] == m["mistralrs_kv_cache_blocks"]
        assert m["mistralrs_kv_cache_usage_ratio"] == 0
    assert len(handles) == CLIENTS
    assert sum(h.cancelled for h in handles) == leaving  # each one that left was cancelled


def test_full_queue_gets_429(tiny_runner):
    with live_server(tiny_app(tiny_runner, max_concurrent_requests=1)) as url:
        async def scenario():
            async with httpx.AsyncClient(timeout=60) as http:
                async with http.stream("POST", f"{url}/v1/chat/completions",
                                       json=chat_body(0, 900)) as first:
                    async for line in first.aiter_lines():
                        if line.startswith("data: "):
                            break  # the first request is in flight: the queue is full
                    second = await http.post(f"{url}/v1/chat/completions",
                                             json={**chat_body(1, 4), "stream": False})
                for _ in range(100):  # the server frees the slot once it sees the client leave
                    after = await http.post(f"{url}/v1/chat/completions",
                                            json={**chat_body(2, 4), "stream": False})
                    if after.status_code != 429:
                        break
                    await asyncio.sleep(0.05)
                return second, after

        second, after = asyncio.run(scenario())
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "queue_full"
    assert set(second.json()["error"]) == {"message", "type", "param", "code"}
    assert after.status_code == 200  # the slot came back
