"""Streaming detokenization against decoding all ids at once, on the shipped models' tokenizers:
SmolLM2's byte-level BPE (characters split across tokens) and Gemma 3's SentencePiece (byte
fallback tokens, spaces written as "▁")."""
from __future__ import annotations

import random

import pytest

from mistralrs.loading.detokenizer import IncrementalDetokenizer
from mistralrs.loading.tokenizer import Tokenizer
from test_tokenizer import (GEMMA, MODELS, NOT_IN_GEMMA_VOCAB, SMOLLM, TEXTS_WITH_ANY_CHARACTER,
                            gguf_tokenizer, random_texts, sentencepiece_metadata)
from golden import golden

REPLACEMENT = "\ufffd"


def stream(tokenizer, ids, prompt_ids=None, skip_special_tokens=True) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
    return [detokenizer.push(token_id) for token_id in ids] + [detokenizer.flush()]


def id_sequences(model_file: str) -> list[list[int]]:
    tokenizer = gguf_tokenizer(model_file)
    rng = random.Random(0)
    cases = golden(model_file)["tokenize"]
    emoji_and_rare = [*TEXTS_WITH_ANY_CHARACTER, "🚀🔥", "👍🏽", "日本語", NOT_IN_GEMMA_VOCAB] * 3
    return ([case["ids"] for case in cases] + [case["ids_parse_special"] for case in cases]
            + [tokenizer.encode(text) for text in random_texts(4, 100, emoji_and_rare)]
            + [[rng.randrange(tokenizer.vocab_size) for _ in range(100)] for _ in range(50)])


@pytest.mark.parametrize("skip_special_tokens", [True, False])
@pytest.mark.parametrize("model_file", MODELS)
def test_pushes_add_up_to_decode(model_file, skip_special_tokens):
    tokenizer = gguf_tokenizer(model_file)
    for ids in id_sequences(model_file):
        chunks = stream(tokenizer, ids, skip_special_tokens=skip_special_tokens)
        text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        assert "".join(chunks) == text, ids
        if REPLACEMENT not in text:
            assert not any(REPLACEMENT in chunk for chunk in chunks), ids


@pytest.mark.parametrize("model_file", MODELS)
def test_a_character_split_across_tokens_comes_out_whole(model_file):
    tokenizer = gguf_tokenizer(model_file)
    for character in ["🚀", "🏽", "日", *NOT_IN_GEMMA_VOCAB]:
        ids = tokenizer.encode(f"a{character}b", add_special_tokens=False)
        chunks = [chunk for chunk in stream(tokenizer, ids) if chunk]
        assert "".join(chunks) == f"a{character}b"
        assert any(character in chunk for chunk in chunks), chunks


def test_byte_tokens_are_held_until_the_run_ends():
    tokenizer = gguf_tokenizer(GEMMA)
    byte = [tokenizer.token_to_id(f"<0x{b:02X}>") for b in "日".encode()]
    assert stream(tokenizer, [*byte, tokenizer.token_to_id("▁the")]) == ["", "", "", "日 the", ""]
    # A byte that can never complete a character is no reason to wait.
    invalid = tokenizer.token_to_id("<0x80>")
    assert stream(tokenizer, [invalid, tokenizer.token_to_id("x")]) == ["", REPLACEMENT + "x", ""]


def test_text_after_a_prompt_keeps_its_leading_space():
    tokenizer = gguf_tokenizer(GEMMA)
    prompt = tokenizer.encode("The capital of France is")
    generated = tokenizer.encode(" Paris, of course.", add_special_tokens=False)
    chunks = stream(tokenizer, generated, prompt_ids=prompt)
    assert chunks[0] == " Paris"
    full = tokenizer.decode(prompt + generated)
    assert "".join(chunks) == full[len(tokenizer.decode(prompt)):]


def test_space_prefix_is_dropped_only_at_the_start():
    tokenizer = Tokenizer.from_gguf_metadata(sentencepiece_metadata())
    space_hi = tokenizer.token_to_id("▁hi")
    assert stream(tokenizer, [space_hi, space_hi]) == ["hi", " hi", ""]
    assert stream(tokenizer, [space_hi], prompt_ids=[1, space_hi]) == [" hi", ""]


def test_a_character_begun_by_the_prompt_is_emitted_when_completed():
    tokenizer = gguf_tokenizer(GEMMA)
    first, second, third = (tokenizer.token_to_id(f"<0x{b:02X}>") for b in "日".encode())
    assert "".join(stream(tokenizer, [third, tokenizer.token_to_id("x")],
                          prompt_ids=[first, second])) == "日x"


def test_special_tokens_are_skipped_or_shown():
    tokenizer = gguf_tokenizer(SMOLLM)
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert "".join(stream(tokenizer, ids)) == "user\nhi"
    assert "".join(stream(tokenizer, ids, skip_special_tokens=False)) == \
        "<|im_start|>user\nhi<|im_end|>"


def test_ids_past_the_vocabulary_stand_for_no_text():
    """Models often pad their embedding table beyond the tokenizer's vocabulary."""
    tokenizer = gguf_tokenizer(SMOLLM)
    hi = tokenizer.encode("hi")
    assert "".join(stream(tokenizer, [*hi, tokenizer.vocab_size, *hi])) == "hihi"


class DecodeSpy:
    """A tokenizer that records the longest id list it was asked to decode."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self.longest = 0

    def decode(self, ids, skip_special_tokens=True):
        self.longest = max(self.longest, len(ids))
        return self._tokenizer.decode(ids, skip_special_tokens)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize("model_file", MODELS)
def test_each_push_decodes_a_short_window(model_file):
    tokenizer = gguf_tokenizer(model_file)
    # Runs of <0xNN> tokens are held whole: they stay out of this text.
    words = [word for word in TEXTS_WITH_ANY_CHARACTER if word not in NOT_IN_GEMMA_VOCAB]
    text = " ".join(random_texts(5, 200, [*words, "🚀", "日本語"]))
    ids = tokenizer.encode(text)
    spy = DecodeSpy(tokenizer)
    assert "".join(stream(spy, ids)) == tokenizer.decode(ids)
    assert len(ids) > 1000 and spy.longest <= 16
