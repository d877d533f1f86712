"""Authentication, size limit, model names and validation: each refusal has its documented
status and OpenAI's error body."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server_harness import tiny_app

CHAT = "/v1/chat/completions"
HELLO = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture(scope="module")
def client(tiny_runner):
    with TestClient(tiny_app(tiny_runner, max_tokens_limit=8, max_body_bytes=4096)) as client:
        yield client


@pytest.fixture(scope="module")
def guarded(tiny_runner):
    app = tiny_app(tiny_runner, api_key="secret", check_model_name=True)
    with TestClient(app) as client:
        yield client


def test_api_key(guarded):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret"}):
        for method, path, body in (("POST", CHAT, HELLO), ("GET", "/v1/models", None)):
            response = guarded.request(method, path, json=body, headers=headers)
            assert error_of(response, 401)["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
    # authentication comes before looking at the body
    assert guarded.post(CHAT, json={"bad": 1}).status_code == 401
    ok = {"Authorization": "Bearer secret"}
    assert guarded.post(CHAT, json=HELLO, headers=ok).status_code == 200
    assert guarded.get("/v1/models", headers=ok).json()["data"][0]["id"] == "tiny"
    for open_path in ("/", "/health", "/metrics", "/docs", "/openapi.json"):
        assert guarded.get(open_path).status_code == 200, open_path


def test_model_names_are_checked_when_the_server_names_its_model(guarded, client):
    ok = {"Authorization": "Bearer secret"}
    error = error_of(guarded.post(CHAT, json={**HELLO, "model": "gpt-4"}, headers=ok), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    for name in ("tiny", ""):
        assert guarded.post(CHAT, json={**HELLO, "model": name}, headers=ok).status_code == 200
    assert client.post(CHAT, json={**HELLO, "model": "anything"}).json()["model"] == "tiny"


def test_body_size_limit(client):
    big = {**HELLO, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert error_of(client.post(CHAT, json=big), 413)["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"messages": "'
        for _ in range(50):
            yield b"x" * 100
        yield b'"}'

    response = client.post(CHAT, content=chunked(), headers={"Content-Type": "application/json"})
    assert error_of(response, 413)["code"] == "request_too_large"
    assert client.post(CHAT, json=HELLO).status_code == 200


@pytest.mark.parametrize("body, param, words", [
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature",
     "greater than or equal to 0"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": []}, "tools", "not supported"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
     None, "json_object"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role", "required"),
    ({"temperature": 0.5}, "messages", "required"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}, "max_tokens", "8"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "3"}, "max_tokens",
     "valid integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 500}}, "logit_bias.5",
     "100"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"99999": 1}}, None,
     "outside the vocabulary"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1, "a"]}, "stop.0", "string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content.0.type", "'text'"),
])
def test_invalid_chat_requests(client, body, param, words):
    error = error_of(client.post(CHAT, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_invalid_completion_requests(client):
    error = error_of(client.post("/v1/completions", json={"prompt": [5, 99999]}), 400)
    assert "outside the vocabulary" in error["message"]
    error = error_of(client.post("/v1/completions", json={"prompt": "hi", "suffix": "x"}), 400)
    assert error["param"] == "suffix" and "not supported" in error["message"]
    error = error_of(client.post("/v1/completions", content=b"{not json",
                                 headers={"Content-Type": "application/json"}), 400)
    assert "JSON" in error["message"]


def test_unknown_routes_and_methods(client):
    assert error_of(client.get("/v1/nothing"), 404)["code"] == "not_found"
    assert error_of(client.get(CHAT), 405)["code"] == "method_not_allowed"
