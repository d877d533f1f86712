"""What `mistralrs serve` is configured with beyond the model."""
from __future__ import annotations

from dataclasses import dataclass


def parse_milliseconds(value: str) -> float:
    """A positive number of milliseconds (as KEEP_ALIVE_INTERVAL is given) -> seconds."""
    milliseconds = float(value)
    if not milliseconds > 0:
        raise ValueError(f"expected a positive number of milliseconds, got {value!r}")
    return milliseconds / 1000


@dataclass
class ServerConfig:
    """`model_name` is the id the server reports; with `check_model_name` a request naming
    another model (other than "") gets 404, else any name is accepted, as mistral.rs does.
    `max_tokens_limit` caps what one request may generate and is its default.
    `keep_alive_seconds` is the longest a stream stays silent before a keep-alive comment."""

    model_name: str
    check_model_name: bool = False
    api_key: str | None = None
    max_body_bytes: int = 2 * 2**20
    max_concurrent_requests: int = 128
    max_tokens_limit: int | None = None
    keep_alive_seconds: float = 10.0
