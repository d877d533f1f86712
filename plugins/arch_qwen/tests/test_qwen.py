"""The Qwen plugin against transformers' Qwen2ForCausalLM and Qwen3ForCausalLM on tiny random
configs (fp32, GQA): safetensors checkpoints, and GGUF files written by gguf-py."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from mistralrs import CompletionRequest, Runner, Which
from mistralrs.engine.scoring import score
from mistralrs.loading.model_loader import load_gguf
from mistralrs_arch_qwen.config import parse_qwen2
from gguf_writer import write_neox_rope_gguf
from tiny_models import save_hf_model

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, eos_token_id=257,
              bos_token_id=256)
SLIDING = dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)

# Qwen3's head_dim (32) is never hidden/heads (16); the sliding configs slide layers 1 and 2 only.
TINY_CONFIGS = {
    "qwen2": (Qwen2Config, dict(num_hidden_layers=2, tie_word_embeddings=False,
                                rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
    "qwen2-tied-sliding": (Qwen2Config, dict(**SLIDING, num_hidden_layers=3,
                                             tie_word_embeddings=True)),
    "qwen3": (Qwen3Config, dict(num_hidden_layers=2, head_dim=32, tie_word_embeddings=False)),
    "qwen3-bias-tied-sliding": (Qwen3Config, dict(**SLIDING, num_hidden_layers=3, head_dim=32,
                                                  attention_bias=True, tie_word_embeddings=True)),
}


def tiny_qwen(kind: str, **overrides):
    """A random model whose every weight is far from its initial value (biases start at 0 and
    norm weights at 1, which would hide a missing bias or norm)."""
    torch.manual_seed(0)
    config_class, options = TINY_CONFIGS[kind]
    config = config_class(**COMMON, **{**options, **overrides})
    model_class = Qwen3ForCausalLM if config_class is Qwen3Config else Qwen2ForCausalLM
    model = model_class(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_matches_transformers_on_prefill_cached_decode_and_greedy_generation(tmp_path, kind):
    """transformers' `generate` feeds its tokens one at a time through its KV cache; its logits
    at each step are the oracle for our cached decode steps, its tokens for our greedy run."""
    reference = tiny_qwen(kind)
    path = save_hf_model(reference, tmp_path / kind)
    prompt = [256] + random_ids(11, seed=1)
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
    generated = out.sequences[0, len(prompt):].tolist()
    ids = prompt + generated
    with torch.no_grad():
        full = reference(torch.tensor([ids])).logits[0]

    runner = Runner(Which.Plain(model_id=str(path)), progress=False)
    try:
        assert runner.loaded.architecture.name == ("Qwen3" if "qwen3" in kind else "Qwen2")
        assert max_diff(score(runner.loaded, ids), full) < 1e-4
        assert max_diff(score(runner.loaded, ids, chunks=[13, 17, len(ids) - 30]), full) < 1e-4
        steps = score(runner.loaded, ids[:-1], chunks=[len(prompt)] + [1] * (len(generated) - 1))
        assert max_diff(steps[len(prompt) - 1:], torch.cat(out.logits)) < 1e-4
        greedy = runner.engine.submit(prompt, CompletionRequest(
            prompt, max_tokens=32, temperature=0).sampling_params()).result()
    finally:
        runner.shutdown()
    assert greedy.choices[0].token_ids == generated


@pytest.mark.parametrize("use_sliding_window", [True, False])
def test_sliding_layers_from_transformers4_keys(use_sliding_window):
    """transformers 4 configs have no `layer_types` and keep the window even when unused."""
    config = Qwen2Config(**COMMON, num_hidden_layers=4, use_sliding_window=use_sliding_window,
                         sliding_window=8, max_window_layers=3)
    raw = {k: v for k, v in config.to_dict().items() if k != "layer_types"}
    raw["sliding_window"] = 8
    expected = tuple(config.sliding_window if kind == "sliding_attention" else None
                     for kind in config.layer_types)
    assert (8 in expected) == use_sliding_window
    assert parse_qwen2(raw, "hf").sliding_windows == expected


@pytest.mark.parametrize("arch, tie", [("qwen2", False), ("qwen3", True)])
def test_gguf_matches_dequantized_reference(tmp_path, arch, tie):
    """GGUF files written as llama.cpp's converter does (q/k rows unpermuted, Q8_0 matrices, no
    output tensor when tied), against transformers running the weights gguf-py dequantizes.
    GGUF cannot state Qwen's sliding window, so these configs have none."""
    model = tiny_qwen(arch, tie_word_embeddings=tie)
    path = tmp_path / f"{arch}.gguf"
    model.load_state_dict(write_neox_rope_gguf(model, path, arch, GGMLQuantizationType.Q8_0))

    loaded = load_gguf(str(tmp_path), path.name, dtype=torch.float32,
                       device=torch.device("cpu"), progress=False)
    assert loaded.architecture.name == arch.capitalize()
    ids = random_ids(40, seed=2)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
    assert max_diff(score(loaded, ids, chunks=[20] + [1] * 20), expected) < 1e-4
