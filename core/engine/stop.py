"""Stop strings matched on decoded text, across token boundaries."""
from __future__ import annotations


class StopStringMatcher:
    """Releases a choice's decoded text as it comes, holding back only what could still be the
    start of a stop string; when a stop string appears, the text ends just before it.

    Only the held-back text is kept: a stop string cannot begin in text already released
    (that text's end was held back as long as it began one), so the search never looks back."""

    def __init__(self, stop_strings: tuple[str, ...]):
        self.stop_strings = tuple(s for s in stop_strings if s)
        self._held = ""

    def add(self, delta: str) -> tuple[str, bool]:
        """Add decoded text; returns (newly releasable text, whether a stop string matched)."""
        if not self.stop_strings:
            return delta, False
        text, self._held = self._held + delta, ""
        hits = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            return text[:min(hits)], True
        keep = self._held_back(text)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        text, self._held = self._held, ""
        return text

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
