"""Running the app under uvicorn until SIGINT or SIGTERM, then shutting down gracefully."""
from __future__ import annotations

import signal

import uvicorn
from fastapi import FastAPI


def serve(app: FastAPI, host: str, port: int, shutdown_timeout: float,
          log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting connections, let requests in flight
    finish for up to `shutdown_timeout` seconds, cancel the rest (freeing their KV blocks), and
    return normally."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=shutdown_timeout))
    # uvicorn re-raises the signal that stopped it once it has shut down, to run the handler it
    # replaced; ignoring both signals here makes a graceful stop end with exit status 0.
    replaced = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in replaced.items():
            signal.signal(sig, handler)
