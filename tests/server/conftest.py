"""Fixtures of the HTTP server tests: a tiny random Llama and a Runner over it, shared by the
whole session."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mistralrs import Runner, Which
from server_harness import TINY_EOS
from tiny_models import save_hf_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024, eos_token_id=TINY_EOS, bos_token_id=256)
    return save_hf_model(LlamaForCausalLM(config).eval(), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_runner(tiny_model_dir) -> Iterator[Runner]:
    runner = Runner(Which.Plain(model_id=str(tiny_model_dir)), max_seqs=8, pa_gpu_mem=8,
                    pa_blk_size=16, progress=False)
    yield runner
    runner.shutdown()
