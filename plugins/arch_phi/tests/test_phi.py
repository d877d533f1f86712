"""The Phi plugin against transformers' PhiForCausalLM, Phi3ForCausalLM and PhimoeForCausalLM
on tiny random configs (fp32): safetensors checkpoints, and GGUF files written by gguf-py.

The longrope configs extend a 32-token pretraining context to 128, so 12-token prompts cross it
during decode. transformers (and we) pick the short or long factors from a sequence's length in
each forward call, keeping what the cache holds; its `generate` alone recomputes the whole cache
when a sequence first crosses, so for those configs the greedy oracle is transformers' cached
forward, one token at a time.
"""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import Phi3ForCausalLM, PhiForCausalLM, PhimoeForCausalLM
from transformers.models.phimoe.modeling_phimoe import sparsemixer as transformers_sparsemixer

from mistralrs import CompletionRequest, Runner, Which
from mistralrs.engine.scoring import score
from mistralrs.layers import sparsemixer
from mistralrs.loading.model_loader import load_gguf
from mistralrs_arch_phi.config import parse_phi2, parse_phi3, parse_phimoe
from gguf_writer import write_phi_gguf
from tiny_models import save_hf_model

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=128, eos_token_id=257,
              bos_token_id=256, pad_token_id=None)
ORIGINAL_CONTEXT = 32


def longrope(rotary_dim: int) -> dict:
    """Short factors near 1, long factors growing to 6 (one per rotated frequency)."""
    g = torch.Generator().manual_seed(5)
    short = (1 + 0.2 * torch.rand(rotary_dim // 2, generator=g)).tolist()
    long = torch.linspace(1.0, 6.0, rotary_dim // 2).tolist()
    return {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short,
            "long_factor": long, "original_max_position_embeddings": ORIGINAL_CONTEXT}


MOE = dict(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2)
TINY_CONFIGS = {
    # Phi-2's shape: MHA, 40% of each head rotated, untied head with a bias.
    "phi2": (PhiForCausalLM, dict(rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4})),
    "phi2-qk-layernorm-gqa": (PhiForCausalLM, dict(num_key_value_heads=2, qk_layernorm=True)),
    "phi3": (Phi3ForCausalLM, dict(num_key_value_heads=2)),
    "phi3-sliding-tied-partial": (Phi3ForCausalLM, dict(
        num_key_value_heads=2, sliding_window=8, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.75})),
    "phi3-longrope": (Phi3ForCausalLM, dict(
        num_key_value_heads=2, original_max_position_embeddings=ORIGINAL_CONTEXT,
        rope_parameters=longrope(16))),
    # Phi-3.5-MoE's shape, with a wide sparsemixer margin so that routing weights are not all 1.
    "phimoe": (PhimoeForCausalLM, dict(**MOE, num_key_value_heads=2, attention_bias=True,
                                       lm_head_bias=True, router_jitter_noise=0.3)),
    # transformers 5 keeps the short factors past the pretraining context for PhiMoE (4.x and
    # Microsoft's code switch): equal factor sets test the mscale switch alone.
    "phimoe-longrope-mscale": (PhimoeForCausalLM, dict(
        **MOE, num_key_value_heads=2, router_jitter_noise=0.3, rope_parameters={
            **longrope(16), "long_factor": longrope(16)["short_factor"],
            "short_mscale": 1.1, "long_mscale": 1.3})),
}
ARCHITECTURES = {PhiForCausalLM: "Phi2", Phi3ForCausalLM: "Phi3",
                 PhimoeForCausalLM: "Phi3_5MoE"}


def tiny_phi(kind: str, **overrides):
    """A random model whose every weight is far from its initial value (biases start at 0 and
    norm weights at 1, which would hide a missing bias or norm)."""
    torch.manual_seed(0)
    model_class, options = TINY_CONFIGS[kind]
    model = model_class(model_class.config_class(**{**COMMON, **options, **overrides})).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def chunked_reference(model, ids: list[int], chunks: list[int] | None = None) -> torch.Tensor:
    """transformers' logits for `ids` fed in `chunks` through its KV cache (one forward by
    default): the oracle of our prefill, chunked prefill and cached decode steps."""
    rows, cache, start = [], None, 0
    with torch.no_grad():
        for n in chunks or [len(ids)]:
            out = model(torch.tensor([ids[start:start + n]]), past_key_values=cache,
                        use_cache=True)
            cache, start = out.past_key_values, start + n
            rows.append(out.logits[0])
    return torch.cat(rows)


def greedy_reference(model, prompt: list[int], steps: int) -> list[int]:
    """transformers' greedy tokens: `generate`, or for longrope its cached forward one token at
    a time (`generate` recomputes the cache at the crossing; see the module docstring)."""
    if model.config.rope_parameters["rope_type"] != "longrope":
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False)
        return out[0, len(prompt):].tolist()
    tokens = []
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(steps):
            tokens.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([tokens[-1:]]), past_key_values=out.past_key_values,
                        use_cache=True)
    return tokens


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_matches_transformers_on_prefill_cached_decode_and_greedy_generation(tmp_path, kind):
    reference = tiny_phi(kind)
    path = save_hf_model(reference, tmp_path / kind)
    prompt = [256] + random_ids(11, seed=1)
    generated = greedy_reference(reference, prompt, 32)
    ids = prompt + generated
    decode_chunks = [len(prompt)] + [1] * len(generated)

    runner = Runner(Which.Plain(model_id=str(path)), progress=False)
    try:
        assert runner.loaded.architecture.name == ARCHITECTURES[type(reference)]
        for chunks in (None, [13, 17, len(ids) - 30], decode_chunks):
            expected = chunked_reference(reference, ids, chunks)
            assert max_diff(score(runner.loaded, ids, chunks), expected) < 1e-4, chunks
        greedy = runner.engine.submit(prompt, CompletionRequest(
            prompt, max_tokens=32, temperature=0).sampling_params()).result()
    finally:
        runner.shutdown()
    assert greedy.choices[0].token_ids == generated


@pytest.mark.usefixtures("reference_cpu_kernels")
@pytest.mark.parametrize("kind", ["phi2", "phi3-sliding-tied-partial", "phi3-longrope", "phimoe"])
def test_gguf_matches_dequantized_reference(tmp_path, kind):
    """GGUF files written as llama.cpp's converter does (Q8_0 matrices, Phi-3's fused qkv and
    gate/up, longrope factors as tensors, PhiMoE's stacked experts), against transformers
    running the weights gguf-py dequantizes."""
    # GGUF cannot state PhiMoE's routing margin: the published 0.01 is assumed.
    model = tiny_phi(kind, **({"router_jitter_noise": 0.01} if "moe" in kind else {}))
    path = tmp_path / f"{kind}.gguf"
    model.load_state_dict(write_phi_gguf(model, path, GGMLQuantizationType.Q8_0))

    loaded = load_gguf(str(tmp_path), path.name, dtype=torch.float32,
                       device=torch.device("cpu"), progress=False)
    assert loaded.architecture.name == ARCHITECTURES[type(model)]
    assert loaded.config.sliding_window == getattr(model.config, "sliding_window", None)
    ids = random_ids(44, seed=2)
    chunks = [20] + [1] * 24
    assert max_diff(score(loaded, ids, chunks), chunked_reference(model, ids, chunks)) < 1e-4


def test_sparsemixer_matches_transformers():
    """Routing alone, on logits with ties, all-equal rows and close runners-up."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 6, generator=g)
    logits[:8] = logits[:8, :1]
    logits[8:16] *= 0.01
    for eps in (0.01, 0.3):
        weights, ids = transformers_sparsemixer(logits, jitter_eps=eps, training=False)
        ours = sparsemixer(logits, 2, jitter_eps=eps)
        assert torch.equal(ours[1], ids)
        assert max_diff(ours[0], weights) < 1e-6


def test_transformers4_configs():
    """Keys as published checkpoints (transformers 4) state them: Phi-2's partial rotary beside
    the rope settings, Phi-3's "su" scaling with the pretraining length outside it, Phi-3.5-MoE's
    mscales, and no rope_theta (PhiMoE's default base differs)."""
    dims = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4)
    phi2 = parse_phi2({**dims, "partial_rotary_factor": 0.4, "rope_theta": 10000.0,
                       "rope_scaling": None}, "hf")
    assert phi2.rotary_dim == 6 and phi2.lm_head_bias and phi2.attention_bias
    scaling = {"type": "su", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}
    phi3 = parse_phi3({**dims, "rope_scaling": scaling, "max_position_embeddings": 131072,
                       "original_max_position_embeddings": 4096}, "hf")
    assert phi3.rope["rope_type"] == "longrope"
    assert phi3.rope["original_max_position_embeddings"] == 4096
    phimoe = parse_phimoe({**dims, "rope_scaling": {**scaling, "type": "longrope",
                                                    "short_mscale": 1.2, "long_mscale": 1.2,
                                                    "original_max_position_embeddings": 4096}},
                          "hf")
    assert phimoe.rope["rope_theta"] == 1e6 and phimoe.rope["long_mscale"] == 1.2
    assert phimoe.num_local_experts == 16 and phimoe.num_experts_per_tok == 2
