"""The endpoints beside generation: /docs works offline, /openapi.json, /metrics in
Prometheus format, health; and keep-alive comments in silent streams."""
from __future__ import annotations

import asyncio
import time
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mistralrs.cli import build_parser
from mistralrs.server.streaming import KEEP_ALIVE, BackgroundIterator, server_sent_events
from server_harness import tiny_app


@pytest.fixture(scope="module")
def client(tiny_runner):
    with TestClient(tiny_app(tiny_runner)) as client:
        yield client


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_docs_ui_uses_only_local_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    links = _Links()
    links.feed(page.text)
    assert any(url.endswith("swagger-ui-bundle.js") for url in links.urls)
    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//"), url  # same origin
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
    assert "http://" not in page.text and "https://" not in page.text
    assert '"validatorUrl": null' in page.text  # no badge fetched from the online validator
    assert "url: '/openapi.json'" in page.text


def test_openapi_document(client):
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/", "/health",
            "/metrics"} <= set(paths)
    schemas = document["components"]["schemas"]
    chat = schemas["ChatCompletionBody"]["properties"]
    for seed_field in ("messages", "model", "logit_bias", "logprobs", "top_logprobs",
                       "max_tokens", "n", "presence_penalty", "frequency_penalty", "stop",
                       "temperature", "top_p", "top_k", "stream"):
        assert seed_field in chat, seed_field
    for openai_field in ("seed", "stream_options", "response_format"):
        assert openai_field in chat, openai_field
    usage = schemas["Usage"]["properties"]
    assert {"avg_tok_per_sec", "avg_prompt_tok_per_sec", "avg_compl_tok_per_sec"} <= set(usage)
    assert "ChatCompletionChunkResponse" in schemas and "CompletionChunkResponse" in schemas
    streamed = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} == set(streamed)


def test_metrics(client):
    answer = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 3}).json()
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("mistralrs_http_requests_total",
                    (("route", "/v1/completions"), ("status", "200")))] >= 1
    usage = answer["usage"]
    assert samples[("mistralrs_generation_tokens_total", ())] >= usage["completion_tokens"]
    assert samples[("mistralrs_prompt_tokens_total", ())] >= usage["prompt_tokens"]
    assert samples[("mistralrs_time_to_first_token_seconds_count", ())] >= 1
    assert families["mistralrs_http_request_duration_seconds"].type == "histogram"
    for gauge in ("mistralrs_requests_in_flight", "mistralrs_sequences_running",
                  "mistralrs_sequences_waiting", "mistralrs_kv_cache_free_blocks",
                  "mistralrs_kv_cache_blocks", "mistralrs_kv_cache_usage_ratio"):
        assert families[gauge].type == "gauge", gauge
    assert families["mistralrs_preemptions"].type == "counter"


def test_health(client):
    for path in ("/", "/health"):
        assert client.get(path).text == "OK"


def test_keep_alive_comments_while_a_stream_is_silent():
    def slow():
        for word in ("a", "b"):
            time.sleep(0.2)
            yield word

    async def collect():
        source = BackgroundIterator(slow())
        return [e async for e in server_sent_events(source, 0.05, lambda w: {"w": w})]

    events = asyncio.run(collect())
    assert [e for e in events if e != KEEP_ALIVE] == ['data: {"w":"a"}\n\n', 'data: {"w":"b"}\n\n',
                                                     "data: [DONE]\n\n"]
    assert events.index('data: {"w":"a"}\n\n') >= 2  # ~4 keep-alives before each 0.2 s item
    assert all(line.startswith(":") for line in KEEP_ALIVE.splitlines() if line)


def test_keep_alive_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("KEEP_ALIVE_INTERVAL", "250")
    assert build_parser().parse_args(["serve"]).keep_alive_interval == 0.25
    monkeypatch.setenv("KEEP_ALIVE_INTERVAL", "soon")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])
