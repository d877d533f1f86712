"""Tiny random Hugging Face checkpoints for tests, written with transformers itself."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def write_byte_tokenizer(directory: Path) -> int:
    """A byte-level tokenizer (256 byte tokens, then <s> and </s>); returns its size."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}))
    return tok.get_vocab_size()


def save_hf_model(model, directory: Path) -> Path:
    """save_pretrained (safetensors) plus a byte tokenizer, so the directory loads like a hub repo."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    write_byte_tokenizer(directory)
    return directory
