"""Configs with corrupt sizes fail with ModelFormatError before anything is built."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mistralrs.errors import ModelFormatError
from mistralrs.loading.model_loader import load_plain
from tiny_models import save_hf_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    return save_hf_model(LlamaForCausalLM(config), tmp_path_factory.mktemp("m"))


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": 2**31}, "num_hidden_layers"),
    ({"hidden_size": 2**32 - 1}, "hidden_size"),
    ({"num_attention_heads": 0}, "num_attention_heads|ZeroDivisionError"),
    ({"num_key_value_heads": 3}, "share"),
    ({"vocab_size": -5}, "vocab_size"),
    ({"intermediate_size": "big"}, "intermediate_size"),
    ({"rope_parameters": {"rope_type": "made-up", "rope_theta": 1e4}}, "rope scaling .made-up."),
])
def test_corrupt_sizes(model_dir, change, message):
    original = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text(json.dumps({**json.loads(original), **change}))
    try:
        with pytest.raises((ModelFormatError, NotImplementedError), match=message):
            load_plain(str(model_dir), progress=False)
    finally:
        (model_dir / "config.json").write_text(original)
