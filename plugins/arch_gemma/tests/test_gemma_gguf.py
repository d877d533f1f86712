"""A tiny Gemma 3 written as GGUF the way llama.cpp's converter does (norms stored as 1 + w, no
q/k permutation, F32 and Q8_0 weights) loads through Which.GGUF and matches transformers
running the weights gguf-py itself dequantizes."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from mistralrs import CompletionRequest, Runner, Which
from mistralrs.engine.scoring import score
from gguf_writer import write_gemma3_gguf


def tiny_gemma3() -> Gemma3ForCausalLM:
    """Within what a GGUF file can say: llama.cpp's fixed layer pattern (every 6th layer global)
    and local rope base (10000), and query_pre_attn_scalar = head_dim."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=288, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
        sliding_window=8, max_position_embeddings=128, eos_token_id=257, bos_token_id=256,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        attn_implementation="eager")
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0])
def test_gguf_gemma3_matches_dequantized_reference(tmp_path, qtype):
    model = tiny_gemma3()
    path = tmp_path / "tiny-gemma3.gguf"
    model.load_state_dict(write_gemma3_gguf(model, path, qtype))

    runner = Runner(Which.GGUF(quantized_model_id=str(tmp_path), quantized_filename=path.name,
                               dtype="F32"), progress=False)
    try:
        assert runner.loaded.architecture.name == "Gemma3"
        ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(2)).tolist()
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0]
        ours = score(runner.loaded, ids, chunks=[20] + [1] * 20)
        assert (ours - expected).abs().max().item() < 1e-4
        with torch.no_grad():
            greedy = model.generate(torch.tensor([ids[:8]]), max_new_tokens=24, do_sample=False)
        out = runner.engine.submit(ids[:8], CompletionRequest(
            ids[:8], max_tokens=24, temperature=0).sampling_params()).result()
        assert out.choices[0].token_ids == greedy[0, 8:].tolist()
    finally:
        runner.shutdown()
