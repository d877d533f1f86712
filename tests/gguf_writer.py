"""Writing tiny Hugging Face models as GGUF files with gguf-py, the way llama.cpp's converter
names and lays out tensors; the test oracle for our GGUF loading."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType, get_tensor_name_map, quants
from gguf.constants import MODEL_ARCH_NAMES
from tokenizers import pre_tokenizers


def permute_for_llama_cpp(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter reorders q/k rows from rotate-half to interleaved pairs."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_byte_level_vocab(writer: GGUFWriter) -> None:
    """A byte-level BPE vocabulary as GGUF gpt2 metadata: the 256 byte tokens, <s> (256),
    </s> (257) and one merge (two spaces)."""
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["<s>", "</s>", "ĠĠ"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3, 3, 1])
    writer.add_token_merges(["Ġ Ġ"])
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_add_bos_token(False)


def quantized_roundtrip(weight: np.ndarray, qtype: GGMLQuantizationType) -> torch.Tensor:
    """What a GGUF reader should see for `weight` stored as `qtype`, via gguf-py alone."""
    return torch.from_numpy(quants.dequantize(quants.quantize(weight, qtype), qtype).copy())


def _write_gguf(model, path: Path, arch: str, qtype: GGMLQuantizationType, add_metadata,
                transform=None, skip: tuple[str, ...] = (),
                tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Shared by the writers below: the metadata every architecture has, `add_metadata(writer)`
    for the rest, then each HF tensor (but `skip`) under its gguf-py name, passed through
    `transform(gguf_name, array)` as the converter would; weights of 2 or more dimensions stored
    as `qtype`. `tensors` replaces the model's state dict where the converter renames or splits.
    Returns the HF state dict as a GGUF reader should reconstruct it (quantization applied)."""
    config = model.config
    names = get_tensor_name_map(next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch),
                                config.num_hidden_layers)
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if hasattr(config, "rms_norm_eps"):  # LayerNorm models add their eps in add_metadata
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    add_metadata(writer)
    write_byte_level_vocab(writer)
    expected = {}
    for hf_name, tensor in (model.state_dict() if tensors is None else tensors).items():
        if hf_name in skip:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        data = tensor.float().numpy()
        if transform is not None:
            data = transform(gguf_name, data)
        if data.ndim >= 2 and qtype != GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, quants.quantize(data, qtype), raw_dtype=qtype)
            expected[hf_name] = quantized_roundtrip(tensor.float().numpy(), qtype)
        else:
            writer.add_tensor(gguf_name, data)
            expected[hf_name] = tensor.float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def write_llama_gguf(model, path: Path, qtype: GGMLQuantizationType) -> dict[str, torch.Tensor]:
    """Write a transformers Llama model as GGUF; 2-D weights (but norms) stored as `qtype`.
    Mistral and Mixtral too, as llama.cpp does: a Mixtral's experts become the stacked
    `ffn_{gate,up,down}_exps` tensors, with `expert_count` and `expert_used_count`.
    Returns the HF state dict as a GGUF reader should reconstruct it (quantization applied)."""
    config = model.config
    num_experts = getattr(config, "num_local_experts", 0)

    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        if num_experts:
            writer.add_expert_count(num_experts)
            writer.add_expert_used_count(config.num_experts_per_tok)

    def permute_rotary_rows(gguf_name: str, data: np.ndarray) -> np.ndarray:
        if gguf_name.endswith("attn_q.weight"):
            return permute_for_llama_cpp(data, config.num_attention_heads)
        if gguf_name.endswith("attn_k.weight"):
            return permute_for_llama_cpp(data, config.num_key_value_heads)
        return data

    expected = _write_gguf(model, path, "llama", qtype, add_metadata, permute_rotary_rows,
                           tensors=_split_stacked_experts(model.state_dict()))
    return _merge_stacked_experts(expected)


def _split_stacked_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' stacked experts (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj`)
    under the per-projection names that gguf-py maps to `ffn_{gate,up,down}_exps`."""
    split = {}
    for name, tensor in state.items():
        if name.endswith(".experts.gate_up_proj"):
            gate, up = tensor.chunk(2, dim=1)
            split[name.replace("gate_up_proj", "gate_proj.weight")] = gate
            split[name.replace("gate_up_proj", "up_proj.weight")] = up
        elif name.endswith(".experts.down_proj"):
            split[name + ".weight"] = tensor
        else:
            split[name] = tensor
    return split


def _merge_stacked_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `_split_stacked_experts`."""
    merged = {}
    for name, tensor in state.items():
        if name.endswith(".experts.gate_proj.weight"):
            up = state[name.replace("gate_proj", "up_proj")]
            merged[name.replace("gate_proj.weight", "gate_up_proj")] = torch.cat([tensor, up], 1)
        elif name.endswith(".experts.down_proj.weight"):
            merged[name.removesuffix(".weight")] = tensor
        elif not name.endswith(".experts.up_proj.weight"):
            merged[name] = tensor
    return merged


_GEMMA_ARCHES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}


def write_gemma_gguf(model, path: Path, qtype: GGMLQuantizationType) -> dict[str, torch.Tensor]:
    """Write a transformers Gemma, Gemma2 or Gemma3 causal LM as llama.cpp's converter does:
    norm weights stored as 1 + w, q/k rows not permuted (gemma uses NEOX rope), no output tensor
    when tied, and only the metadata the converter writes. What the file cannot say, llama.cpp
    assumes, so the model must follow it: rope base 10000 (Gemma 1/2; Gemma 3's local layers),
    Gemma2's even layers and Gemma3's all but every 6th sliding, query_pre_attn_scalar =
    head_dim. Returns what `write_llama_gguf` does."""
    config = model.config
    arch = _GEMMA_ARCHES[config.model_type]

    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        if arch == "gemma2":
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
            writer.add_sliding_window(config.sliding_window)
        if arch == "gemma3":
            global_rope = config.rope_parameters["full_attention"]
            writer.add_rope_freq_base(global_rope["rope_theta"])
            if global_rope["rope_type"] == "linear":
                writer.add_rope_scaling_type(RopeScalingType.LINEAR)
                writer.add_rope_scaling_factor(global_rope["factor"])
            writer.add_sliding_window(config.sliding_window)
            if config.final_logit_softcapping:
                writer.add_final_logit_softcapping(config.final_logit_softcapping)

    def add_one_to_norms(gguf_name: str, data: np.ndarray) -> np.ndarray:
        return data + 1 if gguf_name.endswith("norm.weight") else data

    if not config.tie_word_embeddings:
        return _write_gguf(model, path, arch, qtype, add_metadata, add_one_to_norms)
    expected = _write_gguf(model, path, arch, qtype, add_metadata, add_one_to_norms,
                           skip=("lm_head.weight",))
    expected["lm_head.weight"] = expected["model.embed_tokens.weight"]
    return expected


def write_neox_rope_gguf(model, path: Path, arch: str,
                         qtype: GGMLQuantizationType) -> dict[str, torch.Tensor]:
    """Write a transformers qwen2, qwen3 or starcoder2 model as llama.cpp's converter does:
    these run with NEOX (rotate-half) rope, so q/k rows keep their Hugging Face order; no output
    tensor when embeddings are tied; the head size when the config states one. Beyond the
    converter, a Starcoder2 sliding window is written as `attention.sliding_window` (llama.cpp
    ignores it). Returns what `write_llama_gguf` does."""
    config = model.config

    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        if getattr(config, "head_dim", None):
            writer.add_key_length(config.head_dim)
            writer.add_value_length(config.head_dim)
        if arch == "starcoder2":
            writer.add_layer_norm_eps(config.norm_epsilon)
            if config.sliding_window:
                writer.add_sliding_window(config.sliding_window)

    return _write_gguf_as_converter(model, path, arch, qtype, add_metadata)


def _write_gguf_as_converter(model, path: Path, arch: str, qtype: GGMLQuantizationType,
                             add_metadata, transform=None,
                             tensors: dict[str, torch.Tensor] | None = None
                             ) -> dict[str, torch.Tensor]:
    """`_write_gguf`, with no output tensor for tied embeddings (llama.cpp's converter reads
    safetensors, which hold no lm_head then); the expected lm_head is the table read back."""
    if not model.config.tie_word_embeddings:
        return _write_gguf(model, path, arch, qtype, add_metadata, transform, tensors=tensors)
    expected = _write_gguf(model, path, arch, qtype, add_metadata, transform,
                           skip=("lm_head.weight",), tensors=tensors)
    expected["lm_head.weight"] = expected["model.embed_tokens.weight"]
    return expected


_PHI_ARCHES = {"phi": "phi2", "phi3": "phi3", "phimoe": "phimoe"}


def write_phi_gguf(model, path: Path, qtype: GGMLQuantizationType) -> dict[str, torch.Tensor]:
    """Write a transformers Phi (as `phi2`), Phi3 (`phi3`) or PhiMoE (`phimoe`) causal LM as
    llama.cpp's converter does: q/k rows in Hugging Face order (NEOX rope), Phi-3's fused
    `qkv_proj` / `gate_up_proj` kept fused (`attn_qkv`, a double-width `ffn_up`), the rotary
    dimension count; for phi3 and phimoe the original context, the sliding window (0: none),
    longrope's factors as the tensors `rope_factors_short` / `rope_factors_long` with their
    cos/sin scale `rope.scaling.attn_factor`, and PhiMoE's experts stacked. Returns what
    `write_llama_gguf` does."""
    config = model.config
    arch = _PHI_ARCHES[config.model_type]
    rope = config.rope_parameters
    head_dim = config.hidden_size // config.num_attention_heads
    num_experts = getattr(config, "num_local_experts", 0)

    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
        if arch == "phi2":
            writer.add_layer_norm_eps(config.layer_norm_eps)
            return
        original = (rope.get("original_max_position_embeddings")
                    or getattr(config, "original_max_position_embeddings", None)
                    or config.max_position_embeddings)
        writer.add_rope_freq_base(rope["rope_theta"])
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_sliding_window(config.sliding_window or 0)
        if num_experts:
            writer.add_expert_count(num_experts)
            writer.add_expert_used_count(config.num_experts_per_tok)
        if rope["rope_type"] == "longrope":
            scale = config.max_position_embeddings / original
            writer.add_rope_scaling_attn_factors(
                math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
            for kind in ("long", "short"):
                writer.add_tensor(f"rope_factors_{kind}.weight",
                                  np.array(rope[f"{kind}_factor"], dtype=np.float32))

    expected = _write_gguf_as_converter(model, path, arch, qtype, add_metadata,
                                        tensors=_split_stacked_experts(model.state_dict()))
    return _merge_stacked_experts(expected)
