"""The DeepSeek plugin against transformers' DeepseekV2ForCausalLM / DeepseekV3ForCausalLM on
tiny random configs (fp32, see `tiny_deepseek`), their routers and their YaRN rope; and the
compressed KV cache of multi-head latent attention."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import DeepseekV2Config, DeepseekV3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

from mistralrs.engine.model_runner import ModelRunner, kv_bytes_per_block
from mistralrs.engine.scoring import score
from mistralrs.errors import ModelFormatError
from mistralrs.kernels import attention, attention_triton
from mistralrs.layers import RotaryEmbedding
from mistralrs.layers.moe import grouped_sigmoid_topk, grouped_softmax_topk
from mistralrs.loading.model_loader import load_plain
from mistralrs_arch_deepseek.config import parse_deepseek_v2, parse_deepseek_v3
from tiny_deepseek import ARCHS, COMMON, YARN, tiny_deepseek
from hf_reference import check_greedy_matches_generate
from tiny_models import save_hf_model

CPU = dict(dtype=torch.float32, device=torch.device("cpu"), progress=False)
VARIANTS = {
    "DeepseekV2": ("DeepseekV2", {}),
    "DeepseekV3": ("DeepseekV3", {}),
    "DeepseekV3-rotate-half-rope": ("DeepseekV3", {"rope_interleave": False}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers_on_prefill_and_cached_decode(tmp_path, variant):
    """Prefill against one forward; decode steps against transformers' own cached decode
    (`generate`, one token at a time through its KV cache), positions 20..35 past the rope's
    original 16."""
    arch, overrides = VARIANTS[variant]
    reference = tiny_deepseek(arch, **overrides)
    loaded = load_plain(str(save_hf_model(reference, tmp_path / variant)), **CPU)
    assert loaded.architecture.name == arch
    prompt = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        ids = out.sequences[0].tolist()
        full = reference(torch.tensor([ids])).logits[0]
    assert (score(loaded, ids) - full).abs().max().item() < 1e-4
    decoded = score(loaded, ids, chunks=[len(prompt)] + [1] * 16)
    expected = torch.cat(out.logits)  # rows prompt_len - 1 .. len(ids) - 2
    assert (decoded[len(prompt) - 1:-1] - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_matches_transformers_generate(tmp_path, arch):
    reference = tiny_deepseek(arch, seed=3)
    check_greedy_matches_generate(reference, save_hf_model(reference, tmp_path / arch))


def test_kv_cache_holds_the_compressed_latent(tmp_path):
    """Per token and layer: one key of kv_lora_rank + qk_rope_head_dim features, whose first
    kv_lora_rank are also the value (the value cache is a view of the key cache); not the
    2 * heads * head_dim of keys and values expanded per head."""
    loaded = load_plain(str(save_hf_model(tiny_deepseek("DeepseekV3"), tmp_path / "m")), **CPU)
    layers, latent = COMMON["num_hidden_layers"], COMMON["kv_lora_rank"]
    per_token = (latent + COMMON["qk_rope_head_dim"]) * layers * 4
    expanded = (2 * COMMON["num_attention_heads"] * (COMMON["qk_nope_head_dim"]
                                                     + COMMON["qk_rope_head_dim"]) * layers * 4)
    assert kv_bytes_per_block(loaded.model, 16, torch.float32) == 16 * per_token
    assert per_token < expanded / 4
    runner = ModelRunner(loaded.model, num_blocks=3, block_size=16, dtype=torch.float32,
                         device=torch.device("cpu"))
    allocated = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                 for pair in runner.kv_caches for t in pair}
    assert sum(allocated.values()) == 3 * 16 * per_token
    for k_cache, v_cache in runner.kv_caches:
        assert k_cache.shape[2:] == (1, latent + COMMON["qk_rope_head_dim"])
        assert v_cache.shape[2:] == (1, latent)


def test_triton_attention_kernels_read_values_from_the_key_cache(tmp_path, monkeypatch):
    """The GPU path (Triton kernels, interpreted here) over the latent cache, whose value cache
    is a strided view into the key cache: prefill and decode against transformers."""
    monkeypatch.setattr(attention, "implementation", lambda tensor: attention_triton)
    reference = tiny_deepseek("DeepseekV3")
    loaded = load_plain(str(save_hf_model(reference, tmp_path / "m")), **CPU)
    ids = torch.randint(0, 256, (12,), generator=torch.Generator().manual_seed(4)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    ours = score(loaded, ids, chunks=[9, 1, 1, 1], block_size=4)
    assert (ours - expected).abs().max().item() < 1e-4


def _by_expert(weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = ids.argsort(dim=-1)
    return weights.gather(1, order), ids.gather(1, order)


ROUTER_CONFIG = dict(hidden_size=32, n_routed_experts=16, num_experts_per_tok=3, n_group=4,
                     topk_group=2, routed_scaling_factor=2.5)


def test_group_limited_softmax_routing_matches_deepseek_v2():
    torch.manual_seed(0)
    router = DeepseekV2TopkRouter(DeepseekV2Config(**ROUTER_CONFIG,
                                                   topk_method="group_limited_greedy"))
    router.weight.data.normal_()
    x = torch.randn(256, 32)
    _, expected_weights, expected_ids = router(x)
    options = dict(topk_groups=2, scaling_factor=2.5)
    weights, ids = grouped_softmax_topk(F.linear(x, router.weight), 3, num_groups=4, **options)
    for ours, theirs in zip(_by_expert(weights, ids), _by_expert(expected_weights, expected_ids)):
        torch.testing.assert_close(ours, theirs)
    _, ungrouped = grouped_softmax_topk(F.linear(x, router.weight), 3, scaling_factor=2.5)
    assert (ungrouped.sort().values != ids.sort().values).any(), "the groups never mattered"


def test_biased_sigmoid_routing_matches_deepseek_v3():
    torch.manual_seed(0)
    router = DeepseekV3TopkRouter(DeepseekV3Config(**ROUTER_CONFIG, norm_topk_prob=True))
    router.weight.data.normal_()
    router.e_score_correction_bias.normal_(0, 0.5)
    x = torch.randn(256, 32)
    _, expected_weights, expected_ids = router(x)
    logits, bias = F.linear(x, router.weight), router.e_score_correction_bias
    options = dict(num_groups=4, topk_groups=2, renormalize=True, scaling_factor=2.5)
    weights, ids = grouped_sigmoid_topk(logits, 3, bias, **options)
    for ours, theirs in zip(_by_expert(weights, ids), _by_expert(expected_weights, expected_ids)):
        torch.testing.assert_close(ours, theirs)
    _, unbiased = grouped_sigmoid_topk(logits, 3, None, **options)
    _, ungrouped = grouped_sigmoid_topk(logits, 3, bias, **{**options, "num_groups": 1})
    for other in (unbiased, ungrouped):
        assert (other.sort().values != ids.sort().values).any()


@pytest.mark.parametrize("rope", [YARN, {**YARN, "mscale": 1.0, "mscale_all_dim": 1.0},
                                  {"rope_type": "yarn", "rope_theta": 500.0, "factor": 8.0,
                                   "original_max_position_embeddings": 32}],
                         ids=["deepseek_mscales", "equal_mscales", "plain_yarn"])
def test_yarn_rope_matches_transformers(rope):
    config = DeepseekV2Config(**{**COMMON, "rope_parameters": dict(rope)})
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    ours = RotaryEmbedding(COMMON["qk_rope_head_dim"], config.rope_parameters,
                           COMMON["max_position_embeddings"])
    torch.testing.assert_close(ours.inv_freq, inv_freq)
    assert ours.attention_factor == pytest.approx(attention_factor)


HF_RAW = {"architectures": ["DeepseekV3ForCausalLM"], "vocab_size": 8, "hidden_size": 8,
          "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
          "kv_lora_rank": 4, "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 4,
          "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 4,
          "n_group": 4, "topk_group": 2}


@pytest.mark.parametrize("raw, parse, match", [
    ({**HF_RAW, "n_group": 3}, parse_deepseek_v3, "groups"),
    ({**HF_RAW, "num_experts_per_tok": 5}, parse_deepseek_v3, "best"),
    ({**HF_RAW, "quantization_config": {"quant_method": "fp8"}}, parse_deepseek_v3, "fp8"),
    ({**HF_RAW, "topk_method": "noaux_tc"}, parse_deepseek_v2, "noaux_tc"),
    ({key: value for key, value in HF_RAW.items() if key != "kv_lora_rank"}, parse_deepseek_v3,
     "kv_lora_rank"),
    ({**HF_RAW, "kv_lora_rank": -4}, parse_deepseek_v2, "kv_lora_rank"),
    ({**HF_RAW, "qk_rope_head_dim": 3}, parse_deepseek_v3, "even"),
], ids=["groups_do_not_divide", "top_k_beyond_groups", "fp8", "v2_unknown_routing",
        "missing_latent_size", "negative_latent_size", "odd_rope_size"])
def test_bad_configs_are_clear_errors(raw, parse, match):
    with pytest.raises(ModelFormatError, match=match):
        parse(raw, "hf")
