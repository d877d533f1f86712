"""Joining adjacent pieces by priority: the loop both GGUF tokenizers run on each piece of text."""
from __future__ import annotations

import heapq
from collections.abc import Callable


def join_pairs(pieces: list[str], priority: Callable[[str, str], float | int | None]) -> list[str]:
    """Join adjacent pieces until no pair has a priority: each step joins the pair with the
    lowest `priority(left, right)` (None: never joined), the leftmost on equal priorities. A
    heap of candidate pairs over a linked list of pieces, so that long texts stay O(n log n)."""
    pieces = list(pieces)
    n = len(pieces)
    following = list(range(1, n)) + [-1]
    preceding = list(range(-1, n - 1))
    queue: list[tuple[float | int, int, int, int]] = []

    def offer(left: int, right: int) -> None:
        key = priority(pieces[left], pieces[right])
        if key is not None:
            heapq.heappush(queue, (key, left, right, len(pieces[left]) + len(pieces[right])))

    for i in range(n - 1):
        offer(i, i + 1)
    while queue:
        _, left, right, size = heapq.heappop(queue)
        if (not pieces[left] or not pieces[right] or following[left] != right
                or len(pieces[left]) + len(pieces[right]) != size):
            continue  # one of the two has been joined to something else since
        pieces[left] += pieces[right]
        pieces[right] = ""
        following[left] = following[right]
        if following[left] >= 0:
            preceding[following[left]] = left
            offer(left, following[left])
        if preceding[left] >= 0:
            offer(preceding[left], left)
    return [piece for piece in pieces if piece]
