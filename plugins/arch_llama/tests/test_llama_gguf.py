"""A tiny Llama written as GGUF by gguf-py (F32 and Q8_0) loads through Which.GGUF and matches
transformers running the weights gguf-py itself dequantizes."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import LlamaConfig, LlamaForCausalLM

from mistralrs import CompletionRequest, Runner, Which
from mistralrs.engine.scoring import score
from gguf_writer import write_llama_gguf


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0,
                                   GGMLQuantizationType.Q4_0])
@pytest.mark.usefixtures("reference_cpu_kernels")
def test_gguf_llama_matches_dequantized_reference(tmp_path, qtype):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=288, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False,
                         eos_token_id=257, bos_token_id=256)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path / "tiny.gguf"
    expected_weights = write_llama_gguf(model, path, qtype)
    model.load_state_dict(expected_weights)

    runner = Runner(Which.GGUF(quantized_model_id=str(tmp_path), quantized_filename=path.name,
                               dtype="F32"), progress=False)
    try:
        assert runner.loaded.architecture.name == "Llama"
        ids = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(2)).tolist()
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0]
        ours = score(runner.loaded, ids, chunks=[20] + [1] * 10)
        assert (ours - expected).abs().max().item() < 1e-4
        with torch.no_grad():
            greedy = model.generate(torch.tensor([ids[:8]]), max_new_tokens=12, do_sample=False)
        out = runner.engine.submit(ids[:8], CompletionRequest(
            ids[:8], max_tokens=12, temperature=0).sampling_params()).result()
        assert out.choices[0].token_ids == greedy[0, 8:].tolist()
    finally:
        runner.shutdown()
