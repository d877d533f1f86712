"""Writing tiny Hugging Face models as GGUF files with gguf-py, the way llama.cpp's converter
names and lays out tensors; the test oracle for our GGUF loading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, get_tensor_name_map, quants
from gguf.constants import MODEL_ARCH_NAMES
from tokenizers import pre_tokenizers


def permute_for_llama_cpp(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter reorders q/k rows from rotate-half to interleaved pairs."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_byte_level_vocab(writer: GGUFWriter) -> None:
    """The same byte tokenizer as tiny_models.write_byte_tokenizer, as GGUF gpt2 metadata."""
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["<s>", "</s>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3, 3])
    writer.add_token_merges([])
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_add_bos_token(False)


def quantized_roundtrip(weight: np.ndarray, qtype: GGMLQuantizationType) -> torch.Tensor:
    """What a GGUF reader should see for `weight` stored as `qtype`, via gguf-py alone."""
    return torch.from_numpy(quants.dequantize(quants.quantize(weight, qtype), qtype).copy())


def write_llama_gguf(model, path: Path, qtype: GGMLQuantizationType) -> dict[str, torch.Tensor]:
    """Write a transformers Llama model as GGUF; 2-D weights (but norms) stored as `qtype`.
    Returns the HF state dict as a GGUF reader should reconstruct it (quantization applied)."""
    config = model.config
    arch = "llama"
    names = get_tensor_name_map(next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch),
                                config.num_hidden_layers)
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    write_byte_level_vocab(writer)
    expected = {}
    for hf_name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name.endswith("attn_q.weight"):
            data = permute_for_llama_cpp(data, config.num_attention_heads)
        elif gguf_name.endswith("attn_k.weight"):
            data = permute_for_llama_cpp(data, config.num_key_value_heads)
        if data.ndim == 2 and qtype != GGMLQuantizationType.F32:
            packed = quants.quantize(data, qtype)
            writer.add_tensor(gguf_name, packed, raw_dtype=qtype)
            expected[hf_name] = quantized_roundtrip(tensor.float().numpy(), qtype)
        else:
            writer.add_tensor(gguf_name, data)
            expected[hf_name] = tensor.float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected
