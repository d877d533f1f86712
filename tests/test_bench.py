"""`mistralrs bench` runs and reports what it says it measures."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mistralrs.cli import main
from tiny_models import save_hf_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         eos_token_id=257)
    return save_hf_model(LlamaForCausalLM(config), tmp_path_factory.mktemp("m"))


def test_bench_command_writes_json(model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "-m", str(model_dir), "--prompt-len", "16", "--gen-len", "8",
                 "--concurrency", "1", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["concurrency"] for r in results] == [1, 3]
    for r in results:
        assert r["prompt_tokens"] == 16 and r["generated_tokens"] == 8
        assert r["prefill_tok_per_sec"] > 0 and r["decode_tok_per_sec_aggregate"] > 0
        assert r["ttft_ms_p50"] <= r["ttft_ms_max"]
    printed = capsys.readouterr().out
    assert "decode tok/s total" in printed and "rounds" not in printed  # one round: no spread


def test_repeated_runs_report_the_median(model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "-m", str(model_dir), "--prompt-len", "8", "--gen-len", "4",
                 "--concurrency", "1", "2", "--repeats", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for r in results:
        runs = r["decode_tok_per_sec_aggregate_runs"]
        assert len(runs) == 3 and r["decode_tok_per_sec_aggregate"] == sorted(runs)[1]
    printed = capsys.readouterr().out
    assert "median of 3 runs" in printed and "against concurrency 1: " in printed
    one, two = (r["decode_tok_per_sec_aggregate_runs"] for r in results)
    round_ratios = [b / a for a, b in zip(one, two)]  # round i ran both concurrencies
    assert f"at 2 (rounds {min(round_ratios):.2f}-{max(round_ratios):.2f}x)" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "-m", str(model_dir), "--repeats", "0"])
    assert exit_info.value.code == 2
    assert "--repeats: expected a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--concurrency", "0", "expected a positive integer, got 0"),
    ("--prompt-len", "-4", "expected a positive integer, got -4"),
    ("--gen-len", "1", "expected an integer of at least 2, got 1"),
    ("--max-seqs", "0", "expected a positive integer, got 0"),
])
def test_bad_numbers_are_refused_before_loading(flag, value, message, capsys):
    """Refused as the command line is read (no traceback from inside the engine, no model
    loaded); one generated token would leave no decode to time."""
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "-m", "/nonexistent", flag, value])
    assert exit_info.value.code == 2
    assert f"{flag}: {message}" in capsys.readouterr().err
