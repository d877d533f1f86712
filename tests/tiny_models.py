"""Tiny random Hugging Face checkpoints for tests, written with transformers itself."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

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


TINY_LLAMA = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=256, eos_token_id=257)
"""Two layers, GQA 2, and the byte tokenizer's <s> and </s> (write_byte_tokenizer) as bos, eos."""


def tiny_llama(**config) -> LlamaForCausalLM:
    """A random Llama of TINY_LLAMA's config with `config`'s fields changed, in eval mode; the
    same weights in every run (torch.manual_seed(0) first)."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **config})).eval()


def save_hf_model(model, directory: Path) -> Path:
    """save_pretrained (safetensors) plus a byte tokenizer, so the directory loads like a hub repo."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    write_byte_tokenizer(directory)
    return directory
