"""What `mistralrs serve` is configured with beyond the model."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def _keep_alive_from_environment() -> float:
    """KEEP_ALIVE_INTERVAL (milliseconds, as mistral.rs reads it), default 10 s."""
    raw = os.environ.get("KEEP_ALIVE_INTERVAL", "10000")
    try:
        milliseconds = float(raw)
    except ValueError:
        raise ValueError(f"KEEP_ALIVE_INTERVAL must be a number of milliseconds, got {raw!r}") \
            from None
    if milliseconds <= 0:
        raise ValueError(f"KEEP_ALIVE_INTERVAL must be positive, got {raw!r}")
    return milliseconds / 1000


@dataclass
class ServerConfig:
    """`model_name` is the id the server reports; with `check_model_name` a request naming
    another model (other than "") gets 404, else any name is accepted, as mistral.rs does.
    `max_tokens_limit` caps what one request may generate and is its default."""

    model_name: str
    check_model_name: bool = False
    api_key: str | None = None
    max_body_bytes: int = 2 * 2**20
    max_concurrent_requests: int = 128
    max_tokens_limit: int | None = None
    keep_alive_seconds: float = field(default_factory=_keep_alive_from_environment)
