"""A sequence: one stream of tokens being generated, and where its KV cache lives."""
from __future__ import annotations

import enum
import itertools
from typing import Any

_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Prompt plus generated tokens. `num_computed` tokens have their keys and values in the
    cache blocks listed by `block_table`; the rest still have to go through the model.
    `owner` is whatever the engine attaches (the request and choice it belongs to)."""

    def __init__(self, prompt_ids: list[int], owner: Any = None):
        if not prompt_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.seq_id = next(_ids)
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.num_computed = 0
        self.block_table: list[int] = []
        self.block_keys: list[tuple] = []
        """Content keys of the leading full blocks (see `BlockManager`)."""
        self.status = SequenceStatus.WAITING
        self.owner = owner

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
