"""Continuous batching: every step, decide which sequences run and how many tokens each feeds."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mistralrs.scheduler.block_manager import BlockManager
from mistralrs.scheduler.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int
    completes_input: bool = field(init=False)
    """After this step every token of the sequence is in the cache, so the model's output for
    its last token is a new-token prediction to sample from."""

    def __post_init__(self) -> None:
        self.completes_input = self.seq.num_computed + self.num_new_tokens == len(self.seq)


class Scheduler:
    """Runs decodes of running sequences first, then admits waiting ones (prefills, chunked to
    `max_batched_tokens` per step so that a long prompt cannot stall running decodes), reusing
    cached prefix blocks. When the cache runs out of blocks, the newest running sequence is
    preempted: its blocks are freed and it waits to be recomputed, which gives identical
    results."""

    def __init__(self, block_manager: BlockManager, max_seqs: int, max_batched_tokens: int):
        if max_seqs < 1 or max_batched_tokens < 1:
            raise ValueError("max_seqs and max_batched_tokens must be positive")
        self.blocks = block_manager
        self.max_seqs = max_seqs
        self.max_batched_tokens = max_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_reused_tokens = 0
        self.block_copies: list[tuple[int, int]] = []
        """Copy-on-write block copies the KV cache must make before the scheduled step runs."""

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def add_fork(self, parent: Sequence, child: Sequence) -> None:
        """Run `child`, which shares the parent's tokens and cache blocks, beside it."""
        self.blocks.fork(parent, child)
        child.status = SequenceStatus.RUNNING
        self.running.append(child)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence (finished or cancelled) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> list[ScheduledSequence]:
        self.block_copies = []
        scheduled: list[ScheduledSequence] = []
        budget = self.max_batched_tokens
        for seq in list(self.running):
            if budget == 0:
                break
            if seq not in self.running:  # preempted below to make room for an older one
                continue
            n = min(seq.num_uncomputed, budget)
            while not self.blocks.can_grow(seq, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            self.block_copies += self.blocks.grow(seq, seq.num_computed + n)
            scheduled.append(ScheduledSequence(seq, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            reused = self.blocks.reuse_prefix(seq)
            n = min(seq.num_uncomputed, budget)
            if not self.blocks.can_grow(seq, seq.num_computed + n):
                self.blocks.free(seq)
                break
            self.num_reused_tokens += reused
            self.waiting.popleft()
            self.block_copies += self.blocks.grow(seq, seq.num_computed + n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSequence(seq, n))
            budget -= n
        return scheduled

    def advance(self, scheduled: list[ScheduledSequence]) -> None:
        """Record that the scheduled tokens are now in the cache."""
        for item in scheduled:
            item.seq.num_computed += item.num_new_tokens
            self.blocks.cache_full_blocks(item.seq)
