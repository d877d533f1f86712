"""Stop strings matched on decoded text, across token boundaries."""
from __future__ import annotations


class StopStringMatcher:
    """Accumulates a choice's text and releases only what is final: text that cannot be the
    start of a stop string. When a stop string appears, the text ends just before it."""

    def __init__(self, stop_strings: tuple[str, ...]):
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.text = ""
        self.released = 0

    def add(self, delta: str) -> tuple[str, bool]:
        """Add decoded text; returns (newly releasable text, whether a stop string matched)."""
        self.text += delta
        if not self.stop_strings:
            return self._release(len(self.text)), False
        search_from = max(0, self.released - max(len(s) for s in self.stop_strings))
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop_strings) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return self._release(len(self.text)), True
        return self._release(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._release(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _release(self, upto: int) -> str:
        upto = max(upto, self.released)
        piece, self.released = self.text[self.released:upto], upto
        return piece
