"""Scheduling decisions, checked on the scheduler alone (no model)."""
from __future__ import annotations

from mistralrs.scheduler import BlockManager, Scheduler, Sequence


def step(scheduler: Scheduler) -> dict[int, int]:
    """One step: what was scheduled (seq_id -> new tokens); completed inputs get a token."""
    scheduled = scheduler.schedule()
    scheduler.advance(scheduled)
    for item in scheduled:
        if item.completes_input:
            item.seq.append(1)
    return {item.seq.seq_id: item.num_new_tokens for item in scheduled}


def test_long_prompt_is_chunked_and_does_not_stall_running_decodes():
    scheduler = Scheduler(BlockManager(64, 4), max_seqs=4, max_batched_tokens=16)
    decoding = Sequence([5, 6, 7])
    scheduler.add(decoding)
    assert step(scheduler) == {decoding.seq_id: 3}
    long_prompt = Sequence(list(range(100)))
    scheduler.add(long_prompt)
    chunks = []
    while long_prompt.num_computed < len(long_prompt) - 1 or not chunks:
        scheduled = step(scheduler)
        assert scheduled[decoding.seq_id] == 1  # the decode runs every step
        chunks.append(scheduled.get(long_prompt.seq_id, 0))
        assert sum(scheduled.values()) <= 16
    assert sum(chunks) == 100 and max(chunks) == 15


def test_max_seqs_bounds_running_sequences():
    scheduler = Scheduler(BlockManager(64, 4), max_seqs=2, max_batched_tokens=64)
    seqs = [Sequence([i, i + 1]) for i in range(4)]
    for seq in seqs:
        scheduler.add(seq)
    assert len(step(scheduler)) == 2 and len(scheduler.waiting) == 2
    scheduler.finish(seqs[0])
    assert seqs[2].seq_id in step(scheduler)


def test_prefix_blocks_are_shared_and_copied_before_a_write():
    blocks = BlockManager(8, 4)
    parent = Sequence(list(range(6)))
    blocks.grow(parent, 6)
    parent.num_computed = 6
    blocks.cache_full_blocks(parent)
    child = Sequence(list(range(6)))
    blocks.fork(parent, child)
    assert child.block_table == parent.block_table
    child.append(99)
    copies = blocks.grow(child, 7)  # writes position 6, inside the shared second block
    assert len(copies) == 1 and copies[0][0] == parent.block_table[1]
    assert child.block_table[0] == parent.block_table[0]  # the full first block stays shared
    assert child.block_table[1] != parent.block_table[1]
    blocks.free(parent)
    blocks.free(child)
    assert blocks.num_free_blocks == 8
    again = Sequence(list(range(4)) + [7, 7])
    assert blocks.reuse_prefix(again) == 4  # the cached first block, by content
