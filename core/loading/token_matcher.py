"""Cutting a text at the added tokens (special and user-defined) it contains."""
from __future__ import annotations

import re
from collections.abc import Iterable


class TokenMatcher:
    """Finds the tokens `texts` in a text, the longest one at the leftmost place first. (A
    regular expression of thousands of alternatives takes a quarter of a second to compile:
    this indexes the tokens by first character and length instead.)"""

    def __init__(self, texts: list[str]):
        self._texts = {t for t in texts if t}
        lengths: dict[str, set[int]] = {}
        for text in self._texts:
            lengths.setdefault(text[0], set()).add(len(text))
        self._lengths = {first: sorted(ls, reverse=True) for first, ls in lengths.items()}
        self._starts = (re.compile("[" + "".join(map(re.escape, lengths)) + "]")
                        if lengths else None)

    def split(self, text: str) -> Iterable[tuple[str, bool]]:
        """(piece, is_token) for the stretches of `text`, cut at the tokens found in it."""
        at = 0
        if self._starts is not None:
            for start in self._starts.finditer(text):
                place = start.start()
                if place < at:
                    continue
                for length in self._lengths[text[place]]:
                    if text[place:place + length] in self._texts:
                        if place > at:
                            yield text[at:place], False
                        yield text[place:place + length], True
                        at = place + length
                        break
        if at < len(text):
            yield text[at:], False
