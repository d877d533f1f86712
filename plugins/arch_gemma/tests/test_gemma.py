"""The Gemma plugin against transformers' Gemma, Gemma2 and Gemma3 causal LMs on tiny random
configs (fp32, eager attention), with sequences several sliding windows long."""
from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
)

from mistralrs import CompletionRequest, Runner, Which
from mistralrs.engine.scoring import score
from mistralrs.loading.model_loader import load_plain
from mistralrs_arch_gemma.config import parse_gemma2, parse_gemma3
from hf_reference import incremental_reference
from tiny_models import save_hf_model

SLIDING, FULL = "sliding_attention", "full_attention"
COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=96, max_position_embeddings=128,
              eos_token_id=257, bos_token_id=256, pad_token_id=0, attn_implementation="eager")

# head_dim is never hidden/heads, and query_pre_attn_scalar never head_dim, so that each
# setting is exercised on its own.
TINY_CONFIGS = {
    "gemma": lambda: GemmaConfig(**COMMON, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=1, head_dim=24),
    "gemma2": lambda: Gemma2Config(**COMMON, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=20,
                                   sliding_window=8, attn_logit_softcapping=5.0,
                                   final_logit_softcapping=3.0),
    "gemma3": lambda: Gemma3TextConfig(
        **COMMON, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        query_pre_attn_scalar=16, sliding_window=8, layer_types=[SLIDING, SLIDING, FULL, SLIDING],
        rope_parameters={FULL: {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
                         SLIDING: {"rope_type": "default", "rope_theta": 10.0}}),
}
MODEL_CLASSES = {"gemma": GemmaForCausalLM, "gemma2": Gemma2ForCausalLM,
                 "gemma3": Gemma3ForCausalLM}
ARCHITECTURE_NAMES = {"gemma": "Gemma", "gemma2": "Gemma2", "gemma3": "Gemma3"}


def tiny_gemma(tmp_path, kind: str, seed: int = 0):
    """A random model whose every weight, norms included, is far from its initial value (Gemma
    initializes norm weights to 0, which would hide a wrong (1 + w))."""
    torch.manual_seed(seed)
    model = MODEL_CLASSES[kind](TINY_CONFIGS[kind]()).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model, save_hf_model(model, tmp_path / kind)


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()



def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_logits_match_transformers_on_prefill_chunked_prefill_and_cached_decode(tmp_path, kind):
    reference, path = tiny_gemma(tmp_path, kind)
    loaded = load_plain(str(path), dtype=torch.float32, device=torch.device("cpu"), progress=False)
    assert loaded.architecture.name == ARCHITECTURE_NAMES[kind]
    ids = random_ids(48, seed=1)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    assert max_diff(score(loaded, ids), expected) < 1e-4
    assert max_diff(score(loaded, ids, chunks=[13, 16, 19]), expected) < 1e-4
    decode = score(loaded, ids, chunks=[20] + [1] * 28)
    assert max_diff(decode[20:], incremental_reference(reference, ids, 20)) < 1e-4


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_greedy_generation_matches_transformers_generate(tmp_path, kind):
    reference, path = tiny_gemma(tmp_path, kind, seed=3)
    prompt = [256] + random_ids(11, seed=4)
    with torch.no_grad():
        generated = reference.generate(torch.tensor([prompt]), max_new_tokens=36, do_sample=False)
    expected = generated[0, len(prompt):].tolist()
    runner = Runner(Which.Plain(model_id=str(path), dtype="F32"), progress=False)
    try:
        out = runner.engine.submit(prompt, CompletionRequest(
            prompt, max_tokens=36, temperature=0).sampling_params()).result()
    finally:
        runner.shutdown()
    assert out.choices[0].token_ids == expected


def transformers4_keys(config: dict, drop: tuple[str, ...], **old) -> dict:
    """A transformers-5 config.json rewritten with the keys transformers 4 wrote instead."""
    return {**{k: v for k, v in config.items() if k not in drop}, **old}


def test_gemma2_config_from_transformers4_keys():
    """Without `layer_types`, even layers slide, as transformers decides."""
    config = TINY_CONFIGS["gemma2"]()
    raw = transformers4_keys(config.to_dict(), ("layer_types", "rope_parameters"),
                             rope_theta=config.rope_parameters["rope_theta"])
    parsed = parse_gemma2(raw, "hf")
    assert parsed.layer_types == tuple(config.layer_types) == (SLIDING, FULL, SLIDING)
    assert parsed.rope["rope_theta"] == parsed.local_rope["rope_theta"] == 10000.0


def test_gemma3_config_from_transformers4_keys():
    """transformers 4 wrote the global rope in `rope_theta`/`rope_scaling`, the local base in
    `rope_local_base_freq` and the layer pattern as `sliding_window_pattern`."""
    old = dict(rope_theta=500.0, rope_local_base_freq=10.0, sliding_window_pattern=3,
               rope_scaling={"rope_type": "linear", "factor": 2.0})
    expected = Gemma3TextConfig(**COMMON, num_hidden_layers=7, **old)
    raw = transformers4_keys(expected.to_dict(), ("layer_types", "rope_parameters"), **old)
    parsed = parse_gemma3(raw, "hf")
    assert parsed.layer_types == tuple(expected.layer_types)
    assert SLIDING in parsed.layer_types and FULL in parsed.layer_types
    for ours, layer_type in ((parsed.rope, FULL), (parsed.local_rope, SLIDING)):
        theirs = expected.rope_parameters[layer_type]
        assert {k: ours.get(k) for k in theirs} == theirs
