"""`mistralrs bench` runs and reports what it says it measures."""
from __future__ import annotations

import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mistralrs.cli import main
from tiny_models import save_hf_model


def test_bench_command_writes_json(tmp_path, capsys):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         eos_token_id=257)
    model_dir = save_hf_model(LlamaForCausalLM(config), tmp_path / "m")
    out = tmp_path / "bench.json"
    assert main(["bench", "-m", str(model_dir), "--prompt-len", "16", "--gen-len", "8",
                 "--concurrency", "1", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["concurrency"] for r in results] == [1, 3]
    for r in results:
        assert r["prompt_tokens"] == 16 and r["generated_tokens"] == 8
        assert r["prefill_tok_per_sec"] > 0 and r["decode_tok_per_sec_aggregate"] > 0
        assert r["ttft_ms_p50"] <= r["ttft_ms_max"]
    assert "decode tok/s total" in capsys.readouterr().out
