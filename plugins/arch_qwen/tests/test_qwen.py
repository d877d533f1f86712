"""The Qwen plugin against transformers' Qwen2ForCausalLM and Qwen3ForCausalLM on tiny random
configs (fp32, GQA): safetensors checkpoints, and GGUF files written by gguf-py."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from mistralrs.engine.scoring import score
from mistralrs.loading.model_loader import load_gguf
from mistralrs_arch_qwen.config import parse_qwen2
from gguf_writer import write_neox_rope_gguf
from hf_reference import check_against_transformers, max_diff, perturb_weights, random_ids

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
    torch.manual_seed(0)
    config_class, options = TINY_CONFIGS[kind]
    config = config_class(**COMMON, **{**options, **overrides})
    model_class = Qwen3ForCausalLM if config_class is Qwen3Config else Qwen2ForCausalLM
    return perturb_weights(model_class(config).eval())


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_matches_transformers_on_prefill_cached_decode_and_greedy_generation(tmp_path, kind):
    check_against_transformers(tiny_qwen(kind), tmp_path / kind,
                               "Qwen3" if "qwen3" in kind else "Qwen2")


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


@pytest.mark.usefixtures("reference_cpu_kernels")
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
