"""DeepSeek-V2 / V3 hyper-parameters from a Hugging Face config.json or GGUF metadata.

The two share one model and differ in their routing: V2 takes a softmax over the experts and
may limit each token to the groups holding its best experts ("group_limited_greedy"); V3 takes
sigmoids, chooses by score plus a learned correction bias, and ranks groups by their two best.
llama.cpp writes both as `deepseek2` GGUF files; a V3 file states `expert_gating_func` = 2
(sigmoid), which is how the V3 architecture claims it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mistralrs.errors import ModelFormatError
from mistralrs.layers import rope_parameters_from_hf
from mistralrs.loading.config import decoder_dims, eos_ids, gguf_rope_parameters, require

GGUF_SIGMOID_GATING = 2
"""llama.cpp's `expert_gating_func` for sigmoid scores (1 is softmax, its default)."""

# transformers' defaults for the keys a config.json may leave out.
_HF_DEFAULTS = {
    "DeepseekV2": dict(first_k_dense_replace=0, n_shared_experts=2, routed_scaling_factor=1.0,
                       norm_topk_prob=False, topk_method="greedy", rope_interleave=True),
    "DeepseekV3": dict(first_k_dense_replace=3, n_shared_experts=1, routed_scaling_factor=2.5,
                       norm_topk_prob=True, n_group=8, topk_group=4, rope_interleave=True),
}


@dataclass
class DeepseekConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    """Of the dense feed-forward layers."""
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: dict[str, Any]
    q_lora_rank: int | None
    """Queries through a low-rank bottleneck of this size (q_a_proj, q_b_proj), or None for a
    plain q_proj (V2-Lite)."""
    kv_lora_rank: int
    """The size of the compressed latent from which every head's keys and values come."""
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    """The rotary part of each query and key head; the key's is shared by all heads."""
    v_head_dim: int
    rope_interleaved: bool
    """The checkpoint's rotary features rotate in adjacent pairs (DeepSeek's layout); the loader
    reorders them into halves for `RotaryEmbedding`."""
    scoring: Literal["softmax", "sigmoid"]
    num_experts: int = 0
    """Routed experts of each MoE layer; 0: every layer is dense."""
    num_experts_per_tok: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    """Of each expert (the shared experts form one MLP num_shared_experts times as wide)."""
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    num_groups: int = 1
    topk_groups: int = 1
    norm_topk_prob: bool = False
    """Rescale the chosen experts' weights to sum to 1, before `routed_scaling_factor` (V3's and
    llama.cpp's rule; transformers' V2 never rescales, and V2 checkpoints do not ask it to)."""
    routed_scaling_factor: float = 1.0
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, index: int) -> bool:
        return (self.num_experts > 0 and index >= self.first_k_dense_replace
                and index % self.moe_layer_freq == 0)


def _common_dims(raw: dict[str, Any], fmt: str) -> dict[str, int]:
    dims = decoder_dims(raw, fmt, default_context=4096)
    del dims["num_key_value_heads"], dims["head_dim"]  # MLA has neither
    return dims


def _parse_hf(raw: dict[str, Any], version: str) -> DeepseekConfig:
    quantization = (raw.get("quantization_config") or {}).get("quant_method")
    if quantization:
        raise ModelFormatError(f"{quantization} checkpoints are not supported; use a bf16 or "
                               "fp16 conversion of the model, or a GGUF file")
    hf = {**_HF_DEFAULTS[version], **{k: v for k, v in raw.items() if v is not None}}
    if version == "DeepseekV2":
        method = hf["topk_method"]
        if method not in ("greedy", "group_limited_greedy"):
            raise ModelFormatError(f"DeepSeek-V2 routing {method!r} is not supported; known: "
                                   "greedy, group_limited_greedy")
        grouped = method == "group_limited_greedy"
    else:
        grouped = True
    num_experts = hf.get("n_routed_experts") or 0
    return DeepseekConfig(
        **_common_dims(raw, "hf"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope=rope_parameters_from_hf(raw),
        q_lora_rank=raw.get("q_lora_rank"),
        kv_lora_rank=require(raw, "kv_lora_rank"),
        qk_nope_head_dim=require(raw, "qk_nope_head_dim"),
        qk_rope_head_dim=require(raw, "qk_rope_head_dim"),
        v_head_dim=require(raw, "v_head_dim"),
        rope_interleaved=version == "DeepseekV2" or bool(hf["rope_interleave"]),
        scoring="softmax" if version == "DeepseekV2" else "sigmoid",
        num_experts=num_experts,
        num_experts_per_tok=require(raw, "num_experts_per_tok") if num_experts else 0,
        num_shared_experts=hf["n_shared_experts"],
        moe_intermediate_size=require(raw, "moe_intermediate_size") if num_experts else 0,
        first_k_dense_replace=hf["first_k_dense_replace"],
        moe_layer_freq=hf.get("moe_layer_freq", 1),
        num_groups=hf.get("n_group", 1) if grouped else 1,
        topk_groups=hf.get("topk_group", 1) if grouped else 1,
        norm_topk_prob=bool(hf["norm_topk_prob"]),
        routed_scaling_factor=float(hf["routed_scaling_factor"]),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hidden_act=hf.get("hidden_act", "silu"),
        eos_token_ids=eos_ids(raw),
    )


def _gguf_rope(view: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp runs DeepSeek's YaRN without its cos/sin scale (attention_factor 1) and keeps
    the softmax temperature as `rope.scaling.yarn_log_multiplier` = 0.1 * mscale_all_dim."""
    rope = gguf_rope_parameters(view)
    if rope["rope_type"] == "yarn":
        rope["attention_factor"] = 1.0
        if "rope.scaling.yarn_log_multiplier" in view:
            rope["mscale_all_dim"] = view["rope.scaling.yarn_log_multiplier"] / 0.1
    return rope


def _parse_gguf(view: dict[str, Any]) -> DeepseekConfig:
    """llama.cpp's `deepseek2` keys. Files converted for MLA state the per-head sizes as
    `attention.key_length_mla` / `value_length_mla` (their `key_length` is the latent's);
    older files state them as `key_length` / `value_length`."""
    rope_dim = require(view, "rope.dimension_count")
    key_length = view.get("attention.key_length_mla") or require(view, "attention.key_length")
    value_length = view.get("attention.value_length_mla") or require(view, "attention.value_length")
    num_experts = view.get("expert_count", 0)
    return DeepseekConfig(
        **_common_dims(view, "gguf"),
        rms_norm_eps=view.get("attention.layer_norm_rms_epsilon", 1e-6),
        rope=_gguf_rope(view),
        q_lora_rank=view.get("attention.q_lora_rank") or None,
        kv_lora_rank=require(view, "attention.kv_lora_rank"),
        qk_nope_head_dim=key_length - rope_dim,
        qk_rope_head_dim=rope_dim,
        v_head_dim=value_length,
        rope_interleaved=True,  # llama.cpp rotates adjacent pairs for deepseek2
        scoring=("sigmoid" if view.get("expert_gating_func") == GGUF_SIGMOID_GATING
                 else "softmax"),
        num_experts=num_experts,
        num_experts_per_tok=require(view, "expert_used_count") if num_experts else 0,
        num_shared_experts=view.get("expert_shared_count", 0),
        moe_intermediate_size=require(view, "expert_feed_forward_length") if num_experts else 0,
        first_k_dense_replace=view.get("leading_dense_block_count", 0),
        num_groups=view.get("expert_group_count") or 1,
        topk_groups=view.get("expert_group_used_count") or 1,
        norm_topk_prob=bool(view.get("expert_weights_norm", False)),
        routed_scaling_factor=float(view.get("expert_weights_scale") or 1.0),
        tie_word_embeddings=True,  # used only when the file has no `output.weight`
    )


_MLA_SIZES = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
              "q_lora_rank", "num_experts", "num_experts_per_tok", "num_shared_experts",
              "moe_intermediate_size", "first_k_dense_replace", "moe_layer_freq")


def _validated(config: DeepseekConfig) -> DeepseekConfig:
    """The sizes beyond the core's `validate_sizes`, and a routing that can pick its experts."""
    for name in _MLA_SIZES:
        value = getattr(config, name)
        if value is None or (name.startswith(("num_", "first_")) and value == 0):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 20:
            raise ModelFormatError(f"model config {name}={value!r} is not a plausible size; "
                                   "the file is corrupt")
    if config.qk_rope_head_dim % 2:
        raise ModelFormatError(f"qk_rope_head_dim={config.qk_rope_head_dim} must be even")
    if not config.num_experts:
        return config
    experts, groups, used_groups = config.num_experts, config.num_groups, config.topk_groups
    if experts % groups or not 0 < used_groups <= groups:
        raise ModelFormatError(f"the config splits {experts} experts into {groups} groups and "
                               f"routes to {used_groups} of them; expected a divisor of the "
                               "experts and 1 to that many groups")
    reachable = used_groups * (experts // groups)
    if not 0 < config.num_experts_per_tok <= reachable:
        raise ModelFormatError(f"the config routes each token to {config.num_experts_per_tok} "
                               f"experts, but only {reachable} are in its {used_groups} best "
                               "groups")
    return config


def parse_deepseek_v2(raw: dict[str, Any], fmt: str) -> DeepseekConfig:
    return _validated(_parse_gguf(raw) if fmt == "gguf" else _parse_hf(raw, "DeepseekV2"))


def parse_deepseek_v3(raw: dict[str, Any], fmt: str) -> DeepseekConfig:
    return _validated(_parse_gguf(raw) if fmt == "gguf" else _parse_hf(raw, "DeepseekV3"))


def is_deepseek_v3_gguf(view: dict[str, Any]) -> bool:
    return view.get("expert_gating_func") == GGUF_SIGMOID_GATING
