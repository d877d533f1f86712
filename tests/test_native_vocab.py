"""The compact vocabulary: `StringArray`, and the native kernels' tables against Python's
dictionaries (`DictBPETable`, `DictSentencePieceTable`, themselves checked against Hugging Face
`tokenizers` and llama.cpp's golden ids in test_tokenizer.py)."""
from __future__ import annotations

import random

import gguf
import numpy as np
import pytest
from test_tokenizer import GEMMA, NOT_IN_GEMMA_VOCAB, WORDS, gguf_path

from mistralrs.default_model import default_model_path
from mistralrs.loading.byte_level_bpe import DictBPETable
from mistralrs.loading.native_vocab import NativeBPETable, NativeSentencePieceTable
from mistralrs.loading.sentencepiece import SPACE_MARK, DictSentencePieceTable
from mistralrs.loading.string_array import StringArray

TEXTS = ["", "a", "Ġthe", "é", "日本語", "with\0nul", "", "x" * 300]


def test_string_array_reads_back_every_string():
    array = StringArray.of(TEXTS)
    assert len(array) == len(TEXTS)
    assert [array[i] for i in range(len(TEXTS))] == TEXTS == array.tolist() == list(array)
    assert array[-1] == TEXTS[-1] and array[2:5] == TEXTS[2:5]
    assert array == TEXTS and array != TEXTS[:-1] and array != "abc"
    assert array.lengths().tolist() == [len(t.encode()) for t in TEXTS]
    with pytest.raises(IndexError):
        array[len(TEXTS)]
    assert StringArray.of([]).tolist() == [] and len(StringArray.of([])) == 0


@pytest.fixture(scope="module")
def smollm2_lists():
    fields = gguf.GGUFReader(default_model_path()).fields
    return (fields["tokenizer.ggml.tokens"].contents(),
            fields["tokenizer.ggml.merges"].contents())


def _pieces(tokens: list[str], seed: int) -> list[str]:
    """Pieces made of random tokens' texts (so that many merges apply), 1 to 300 characters."""
    rng = random.Random(seed)
    pieces = []
    for _ in range(300):
        piece = ""
        while len(piece) < rng.choice([1, 3, 8, 20, 300]):
            piece += rng.choice(tokens[:-17])  # (the last are added tokens: not in the alphabet)
        pieces.append(piece)
    return pieces


@pytest.mark.parametrize("ignore_merges", [False, True])
def test_native_table_merges_as_python_does(smollm2_lists, ignore_merges):
    tokens, merges = smollm2_lists
    native = NativeBPETable.build(StringArray.of(tokens), StringArray.of(merges), ignore_merges)
    python = DictBPETable(dict(zip(tokens, range(len(tokens)))), merges, ignore_merges)
    assert isinstance(native, NativeBPETable)
    for seed in range(3):
        pieces = _pieces(tokens, seed)
        assert native.encode(pieces) == python.encode(pieces)
        assert [native.encode([p]) for p in pieces[:50]] == [python.encode([p]) for p in pieces[:50]]
    for token_id in [0, 1, 300, 12345, len(tokens) - 1]:
        assert native.token_id(tokens[token_id]) == python.token_id(tokens[token_id]) == token_id
    assert native.token_id("not a token") is None and native.encode([]) == []


def test_characters_without_a_token_are_dropped_and_the_first_equal_merge_counts():
    """llama.cpp keeps the rank of the first of two equal merges (and `tokenizers` would join
    "a b" first here, by the second "b c"'s rank); a character that is no token is left out."""
    tokens = ["a", "b", "c", "ab", "bc"]
    merges = ["b c", "a b", "b c"]
    native = NativeBPETable.build(StringArray.of(tokens), StringArray.of(merges), False)
    python = DictBPETable(dict(zip(tokens, range(5))), merges, False)
    for table in (native, python):
        assert table.encode(["abc"]) == [0, 4]
        assert table.encode(["axbzc", "ab"]) == [0, 4, 3]


@pytest.mark.parametrize("tokens, merges", [
    (["a", "b", "a"], []),  # a token twice
    (["a", "b"], ["a b"]),  # "ab" is no token
    (["a", "b", "ab"], ["ab"]),  # no space
    (["a", "b", "ab"], ["a "]),  # no right half
])
def test_native_table_refuses_what_the_python_checks_name(tokens, merges):
    assert NativeBPETable.build(StringArray.of(tokens), StringArray.of(merges), False) is None


@pytest.fixture(scope="module")
def gemma_lists():
    fields = gguf.GGUFReader(gguf_path(GEMMA)).fields
    return (fields["tokenizer.ggml.tokens"].contents(),
            np.asarray(fields["tokenizer.ggml.scores"].contents(), np.float32))


def test_native_sentencepiece_merges_as_python_does(gemma_lists):
    """Gemma 3's 262k tokens and scores, on texts with characters that are no token (spelled in
    byte tokens), long runs and repeats."""
    tokens, scores = gemma_lists
    native = NativeSentencePieceTable.build(StringArray.of(tokens), scores, unk_id=3)
    python = DictSentencePieceTable(dict(zip(tokens, range(len(tokens)))), scores, unk_id=3)
    assert isinstance(native, NativeSentencePieceTable) and native.byte_ids == python.byte_ids
    rng = random.Random(0)
    alphabet = [*WORDS, " ", "  ", "\n", *NOT_IN_GEMMA_VOCAB, "é", "日本", "\0"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(200)]
    texts += ["a" * 500, " " * 300, NOT_IN_GEMMA_VOCAB * 10, ""]
    for text in texts:
        text = text.replace(" ", SPACE_MARK)
        assert native.encode(text) == python.encode(text), text
    for token_id in [0, 5, 1000, len(tokens) - 1]:
        assert native.token_id(tokens[token_id]) == token_id


@pytest.mark.parametrize("unk_id", [0, None])
def test_sentencepiece_without_byte_tokens_uses_the_unknown_token(unk_id):
    tokens = ["<unk>", "▁", "h", "i", "hi", "▁h", "▁hi"]
    scores = np.array([0.0, -5.0, -6.0, -7.0, -2.0, -3.0, -1.0], np.float32)
    native = NativeSentencePieceTable.build(StringArray.of(tokens), scores, unk_id)
    python = DictSentencePieceTable(dict(zip(tokens, range(7))), scores, unk_id)
    for table in (native, python):
        assert table.byte_ids is None
        assert table.encode("▁hi▁xh") == [6, 1] + ([0] if unk_id == 0 else []) + [2]
        assert table.encode("▁hih") == [6, 2] and table.encode("") == []
    assert NativeSentencePieceTable.build(StringArray.of(["a", "a"]), scores[:2], None) is None
