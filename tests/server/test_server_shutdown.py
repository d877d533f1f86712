"""`mistralrs serve` shuts down gracefully: on SIGTERM it stops accepting, lets the request
in flight finish, and exits 0; SIGINT also exits 0."""
from __future__ import annotations

import signal
import threading

import httpx
import pytest

from server_harness import TINY_EOS, serve_process


def test_sigterm_finishes_the_stream_in_flight_then_exits_0(tiny_model_dir):
    with serve_process("-m", str(tiny_model_dir), "--shutdown-timeout", "60") as (process, url):
        first_event = threading.Event()
        events: list[str] = []

        def client():
            body = {"prompt": "abc", "max_tokens": 600, "stream": True,
                    "logit_bias": {str(TINY_EOS): -100}}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line.removeprefix("data: "))
                        first_event.set()

        thread = threading.Thread(target=client)
        thread.start()
        assert first_event.wait(60)
        process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert process.wait(timeout=60) == 0
    assert events[-1] == "[DONE]" and len(events) == 600 + 1  # every token, then [DONE]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)


def test_sigint_exits_0(tiny_model_dir):
    with serve_process("-m", str(tiny_model_dir)) as (process, _):
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
