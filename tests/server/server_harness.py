"""Running the server in tests: the app over a Runner, in-process or on a real loopback
socket, and `mistralrs serve` itself as a subprocess."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from mistralrs import Runner
from mistralrs.server import ServerConfig, create_app

TINY_EOS = 257
"""The byte tokenizer's </s>: banning it (logit_bias -100) makes the random model talk until
max_tokens."""


def tiny_app(runner: Runner, **config):
    return create_app(runner, ServerConfig(model_name="tiny", **config))


def wait_until_idle(runner: Runner, timeout: float = 30.0) -> dict[str, int]:
    """The engine's stats once nothing runs or waits (cancellations land a step later)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = runner.engine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """uvicorn serving `app` from a thread on a free loopback port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_process(*args: str, timeout: float = 180.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """`mistralrs serve ARGS` on a free loopback port, once its /health answers; yields the
    process and its base URL, and stops it (SIGTERM, then SIGKILL) unless the test did."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mistralrs.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--log-level", "warning", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"mistralrs serve exited with {process.returncode}"
            assert time.monotonic() < deadline, "mistralrs serve did not become healthy"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
