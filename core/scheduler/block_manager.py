"""Fixed-size blocks of the paged KV cache: allocation, prefix caching and copy-on-write.

A block holding `block_size` tokens that are all computed is *full*; full blocks are
identified by their content (the tokens of the block and of every block before it), so a new
sequence whose prompt starts with the same tokens reuses them instead of recomputing. Blocks
are reference-counted: sequences forked from one prompt (the n choices of a request) share
blocks, and a shared block is copied before a sequence writes into it. Unreferenced blocks keep
their content until they are needed again, evicted least recently used first.
"""
from __future__ import annotations

from collections import OrderedDict

from mistralrs.scheduler.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._refs = [0] * num_blocks
        self._key: list[tuple | None] = [None] * num_blocks   # content key of a full block
        self._cached: dict[tuple, int] = {}                   # content key -> block
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence references (cached content included: it can be evicted)."""
        return len(self._free)

    # -- allocation ------------------------------------------------------------------------
    def _take(self) -> int:
        block, _ = self._free.popitem(last=False)
        if self._key[block] is not None:
            del self._cached[self._key[block]]
            self._key[block] = None
        self._refs[block] = 1
        return block

    def _ref(self, block: int) -> None:
        if self._refs[block] == 0:
            del self._free[block]
        self._refs[block] += 1

    def _unref(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free[block] = None

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """New blocks for the sequence's cache to hold `num_tokens` tokens, counting the copy
        of a shared block it would write into."""
        total = -(-num_tokens // self.block_size)
        needed = max(0, total - len(seq.block_table))
        return needed + (self._write_block_shared(seq) and num_tokens > seq.num_computed)

    def _write_block_shared(self, seq: Sequence) -> bool:
        index = seq.num_computed // self.block_size
        return index < len(seq.block_table) and self._refs[seq.block_table[index]] > 1

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= len(self._free)

    def grow(self, seq: Sequence, num_tokens: int) -> list[tuple[int, int]]:
        """Make room for the sequence's first `num_tokens` tokens. Returns the block copies
        (source, destination) the KV cache must perform first (copy-on-write)."""
        copies = []
        if self._write_block_shared(seq) and num_tokens > seq.num_computed:
            index = seq.num_computed // self.block_size
            shared = seq.block_table[index]
            seq.block_table[index] = self._take()
            self._unref(shared)
            copies.append((shared, seq.block_table[index]))
        total = -(-num_tokens // self.block_size)
        while len(seq.block_table) < total:
            seq.block_table.append(self._take())
        return copies

    def free(self, seq: Sequence) -> None:
        for block in reversed(seq.block_table):  # the prefix's head stays cached the longest
            self._unref(block)
        seq.block_table = []
        seq.block_keys = []
        seq.num_computed = 0

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Give `child` (same tokens as `parent`) the parent's blocks, shared."""
        for block in parent.block_table:
            self._ref(block)
        child.block_table = list(parent.block_table)
        child.block_keys = list(parent.block_keys)
        child.num_computed = parent.num_computed

    # -- prefix caching ----------------------------------------------------------------------
    def _content_key(self, seq: Sequence, index: int) -> tuple:
        """(hash of the previous block's key, this block's tokens): equal keys mean equal
        content from the sequence's start, up to a 64-bit hash collision on the prefix."""
        start = index * self.block_size
        previous = hash(seq.block_keys[index - 1]) if index else None
        return (previous, tuple(seq.token_ids[start:start + self.block_size]))


    def reuse_prefix(self, seq: Sequence) -> int:
        """For a sequence with nothing cached yet: take over the cached blocks that hold its
        leading tokens (all but its last token, which must be computed to get logits).
        Returns the number of tokens reused."""
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        for index in range((len(seq) - 1) // self.block_size):
            key = self._content_key(seq, index)
            block = self._cached.get(key)
            if block is None:
                break
            self._ref(block)
            seq.block_table.append(block)
            seq.block_keys.append(key)
        seq.num_computed = len(seq.block_table) * self.block_size
        return seq.num_computed

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Record the content of the sequence's newly completed blocks for reuse."""
        if not self.enable_prefix_caching:
            return
        for index in range(len(seq.block_keys), seq.num_computed // self.block_size):
            key = self._content_key(seq, index)
            seq.block_keys.append(key)
            block = seq.block_table[index]
            if key not in self._cached and self._key[block] is None:
                self._cached[key] = block
                self._key[block] = key
