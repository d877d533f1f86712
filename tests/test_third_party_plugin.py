"""A plugin published by someone else (tests/third_party_plugin, pip-installed like any plugin)
is found through the entry point and runs through the core, with no change to the core."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mistralrs import CompletionRequest, Runner, Which
from mistralrs.cli import main
from mistralrs.plugins import default_registry
from tiny_models import write_byte_tokenizer


def test_fixture_plugin_is_discovered_through_its_entry_point():
    arch = default_registry().get("ToyLM")
    assert arch.provider == "mistralrs-arch-toy"
    assert "ToyForCausalLM" in arch.hf_architectures
    names = {p.name: p for p in default_registry().plugins()}
    assert names["mistralrs-arch-toy"].version == "0.0.1"
    assert [a.name for a in names["mistralrs-arch-toy"].architectures] == ["ToyLM"]


def test_plugins_command_lists_it(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "mistralrs-arch-toy 0.0.1" in out and "ToyLM" in out
    assert "mistralrs-arch-llama" in out and "LlamaForCausalLM" in out


def _toy_reference(weights, ids, heads):
    """The toy architecture written out in plain torch: the independent oracle."""
    x = weights["model.embed_tokens.weight"][ids]
    t, h = x.shape
    q, k, v = (x @ weights["model.layers.0.qkv.weight"].T).view(t, 3, heads, -1).unbind(1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / (h // heads) ** 0.5
    scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
    attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, h)
    x = x + attn @ weights["model.layers.0.out.weight"].T
    return x @ weights["lm_head.weight"].T


def test_toy_model_generates_what_its_reference_predicts(tmp_path):
    vocab = write_byte_tokenizer(tmp_path)
    g = torch.Generator().manual_seed(0)
    weights = {
        "model.embed_tokens.weight": torch.randn(vocab, 32, generator=g),
        "model.layers.0.qkv.weight": torch.randn(96, 32, generator=g) * 0.2,
        "model.layers.0.out.weight": torch.randn(32, 32, generator=g) * 0.2,
        "lm_head.weight": torch.randn(vocab, 32, generator=g),
    }
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["ToyForCausalLM"], "vocab_size": vocab, "hidden_size": 32,
         "num_heads": 4}))
    runner = Runner(Which.Plain(model_id=str(tmp_path)), progress=False)
    try:
        prompt = [72, 105, 33]
        out = runner.engine.submit(prompt, CompletionRequest(
            prompt, max_tokens=8, temperature=0).sampling_params()).result()
    finally:
        runner.shutdown()
    ids = list(prompt)
    for _ in range(8):
        ids.append(int(_toy_reference(weights, torch.tensor(ids), heads=4)[-1].argmax()))
    generated = out.choices[0].token_ids
    assert generated == ids[len(prompt):len(prompt) + len(generated)]
    assert len(generated) == 8 or generated[-1] in runner.loaded.eos_token_ids


@pytest.mark.parametrize("name", ["toylm", "ToyLM"])
def test_lookup_by_name_is_case_insensitive(name):
    assert default_registry().get(name).name == "ToyLM"
