"""Writing tiny Hugging Face models as GGUF files with gguf-py, the way llama.cpp's converter
names and lays out tensors; the test oracle for our GGUF loading."""
from __future__ import annotations

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
                transform=None, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Shared by the writers below: the metadata every architecture has, `add_metadata(writer)`
    for the rest, then each HF tensor (but `skip`) under its gguf-py name, passed through
    `transform(gguf_name, array)` as the converter would; 2-D weights stored as `qtype`.
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
    for hf_name, tensor in model.state_dict().items():
        if hf_name in skip:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        data = tensor.float().numpy()
        if transform is not None:
            data = transform(gguf_name, data)
        if data.ndim == 2 and qtype != GGMLQuantizationType.F32:
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
    Returns the HF state dict as a GGUF reader should reconstruct it (quantization applied)."""
    config = model.config

    def add_metadata(writer: GGUFWriter) -> None:
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])

    def permute_rotary_rows(gguf_name: str, data: np.ndarray) -> np.ndarray:
        if gguf_name.endswith("attn_q.weight"):
            return permute_for_llama_cpp(data, config.num_attention_heads)
        if gguf_name.endswith("attn_k.weight"):
            return permute_for_llama_cpp(data, config.num_key_value_heads)
        return data

    return _write_gguf(model, path, "llama", qtype, add_metadata, permute_rotary_rows)


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
