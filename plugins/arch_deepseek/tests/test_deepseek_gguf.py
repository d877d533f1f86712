"""Tiny DeepSeek-V2 and V3 models written as GGUF by gguf-py the way llama.cpp's converter does
(`deepseek2` architecture, names from `gguf.TensorNameMap`, stacked experts, `kv_b_proj` split
into `attn_k_b` (transposed) and `attn_v_b` (or kept whole, as older files do), the MLA and MoE
metadata; F32 and Q8_0), against the same weights (as gguf-py dequantizes them) loaded from
safetensors and run by transformers. The V3 file (sigmoid gating) loads as DeepseekV3.

The rope is YaRN with DeepSeek's usual mscale == mscale_all_dim: llama.cpp's deepseek2 has no
cos/sin scale and keeps only mscale_all_dim (as `rope.scaling.yarn_log_multiplier`)."""
from __future__ import annotations

import pytest
import torch
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, RopeScalingType

from gguf_writer import _merge_stacked_experts, _split_stacked_experts, _write_gguf
from mistralrs.plugins import PluginRegistry
from mistralrs_arch_deepseek import plugin as deepseek_plugin
from tiny_deepseek import ARCHS, YARN, tiny_deepseek
from hf_reference import check_gguf_against_safetensors

ROPE = {**YARN, "mscale": 0.707, "mscale_all_dim": 0.707}


def _split_kv_b(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The converter's `attn_k_b` [H, r, dn] and `attn_v_b` [H, dv, r] from `kv_b_proj`."""
    heads, dn = config.num_attention_heads, config.qk_nope_head_dim
    split = {}
    for name, tensor in state.items():
        if name.endswith("kv_b_proj.weight"):
            per_head = tensor.reshape(heads, dn + config.v_head_dim, -1)
            split[name.replace("kv_b_proj", "k_b_proj")] = per_head[:, :dn].transpose(1, 2)
            split[name.replace("kv_b_proj", "v_b_proj")] = per_head[:, dn:]
        else:
            split[name] = tensor
    return split


def _merge_kv_b(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    merged = {}
    for name, tensor in state.items():
        if name.endswith("k_b_proj.weight"):
            value = state[name.replace("k_b_proj", "v_b_proj")]
            kv_b = torch.cat([tensor.transpose(1, 2), value], dim=1)
            merged[name.replace("k_b_proj", "kv_b_proj")] = kv_b.reshape(-1, kv_b.shape[-1])
        elif not name.endswith("v_b_proj.weight"):
            merged[name] = tensor
    return merged


def write_deepseek2_gguf(model, path, qtype: GGMLQuantizationType,
                         split_kv_b: bool) -> dict[str, torch.Tensor]:
    """Returns the HF state dict as a GGUF reader should reconstruct it."""
    config = model.config

    def add_metadata(writer: GGUFWriter) -> None:
        rope, rope_dim = config.rope_parameters, config.qk_rope_head_dim
        latent = config.kv_lora_rank
        writer.add_rope_freq_base(rope["rope_theta"])
        writer.add_rope_dimension_count(rope_dim)
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        writer.add_rope_scaling_yarn_log_mul(0.1 * rope["mscale_all_dim"])
        if config.q_lora_rank:
            writer.add_q_lora_rank(config.q_lora_rank)
        writer.add_kv_lora_rank(latent)
        if split_kv_b:  # the sizes of the MQA over the latent, then the per-head ones
            writer.add_key_length(latent + rope_dim)
            writer.add_value_length(latent)
            writer.add_key_length_mla(config.qk_nope_head_dim + rope_dim)
            writer.add_value_length_mla(config.v_head_dim)
        else:
            writer.add_key_length(config.qk_nope_head_dim + rope_dim)
            writer.add_value_length(config.v_head_dim)
        writer.add_leading_dense_block_count(config.first_k_dense_replace)
        writer.add_expert_count(config.n_routed_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_shared_count(config.n_shared_experts)
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)
        writer.add_expert_weights_scale(config.routed_scaling_factor)
        writer.add_expert_group_count(config.n_group)
        writer.add_expert_group_used_count(config.topk_group)
        if config.norm_topk_prob:
            writer.add_expert_weights_norm(True)
        if config.model_type == "deepseek_v3":
            writer.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)

    state = _split_stacked_experts(model.state_dict())
    state = {name.replace("e_score_correction_bias", "e_score_correction.bias"): tensor
             for name, tensor in (_split_kv_b(state, config) if split_kv_b else state).items()}
    expected = _write_gguf(model, path, "deepseek2", qtype, add_metadata, tensors=state)
    expected = {name.replace("e_score_correction.bias", "e_score_correction_bias"): tensor
                for name, tensor in expected.items()}
    return _merge_stacked_experts(_merge_kv_b(expected) if split_kv_b else expected)


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0],
                         ids=lambda q: q.name)
@pytest.mark.parametrize("arch, split_kv_b", [("DeepseekV2", True), ("DeepseekV3", True),
                                              ("DeepseekV3", False)],
                         ids=["v2", "v3", "v3-whole-kv_b"])
def test_gguf_matches_safetensors_path_and_transformers(tmp_path, arch, split_kv_b, qtype):
    model = tiny_deepseek(arch, rope=ROPE)
    gguf_path = tmp_path / "tiny.gguf"
    model.load_state_dict(write_deepseek2_gguf(model, gguf_path, qtype, split_kv_b))
    check_gguf_against_safetensors(model, tmp_path, gguf_path.name, arch, tmp_path / "hf")


def test_sigmoid_gated_deepseek2_files_are_v3():
    registry = PluginRegistry(load_entry_points=False)
    registry.register_plugin(deepseek_plugin)
    assert registry.for_gguf("deepseek2", {"expert_gating_func": 2}).name == "DeepseekV3"
    for view in ({"expert_gating_func": 1}, {}):
        assert registry.for_gguf("deepseek2", view).name == "DeepseekV2"
    assert set(ARCHS) == set(registry.architectures)
