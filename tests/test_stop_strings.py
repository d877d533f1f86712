"""StopStringMatcher against searching the whole text at once (str.find), for texts fed in
random pieces: what it releases before the end, and where it stops."""
from __future__ import annotations

import random

from mistralrs.engine.stop import StopStringMatcher


def expected(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def feed(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[str]]:
    matcher = StopStringMatcher(tuple(stops))
    released = []
    for piece in pieces:
        out, hit = matcher.add(piece)
        released.append(out)
        if hit:
            return "".join(released), True, released
    return "".join(released) + matcher.flush(), False, released


def test_random_texts_in_random_pieces_stop_where_str_find_does():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("abc ") for _ in range(rng.randrange(0, 40)))
        stops = ["".join(rng.choice("abc ") for _ in range(rng.randrange(0, 5)))
                 for _ in range(rng.randrange(0, 4))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(1, 8))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        got, hit, released = feed(stops, pieces)
        want, want_hit = expected(text, stops)
        assert (got, hit) == (want, want_hit), (text, stops, pieces)
        # what was released along the way never has to be taken back
        for n in range(len(released) + 1):
            assert want.startswith("".join(released[:n])), (text, stops, pieces)


def test_text_is_released_as_soon_as_it_cannot_start_a_stop_string():
    matcher = StopStringMatcher(("</end>",))
    assert matcher.add("hello <") == ("hello ", False)
    assert matcher.add("/e") == ("", False)
    assert matcher.add("x") == ("</ex", False)
    assert matcher.add(" </end> more") == (" ", True)


def test_without_stop_strings_everything_is_released():
    matcher = StopStringMatcher(("",))
    assert matcher.add("abc") == ("abc", False)
    assert matcher.flush() == ""
