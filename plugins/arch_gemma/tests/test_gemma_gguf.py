"""Tiny Gemma, Gemma2 and Gemma3 models written as GGUF the way llama.cpp's converter does
(norms stored as 1 + w, no q/k permutation, F32 and Q8_0 weights) load through Which.GGUF and
match transformers running the weights gguf-py itself dequantizes."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType
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
from gguf_writer import write_gemma_gguf

# Within what a GGUF file can say (see write_gemma_gguf): rope base 10000 but for Gemma3's
# global layers, llama.cpp's fixed layer patterns, query_pre_attn_scalar = head_dim.
COMMON = dict(vocab_size=288, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
              eos_token_id=257, bos_token_id=256, attn_implementation="eager")
TINY = {
    "Gemma": lambda: GemmaForCausalLM(GemmaConfig(**COMMON, num_hidden_layers=2)),
    "Gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(
        **COMMON, num_hidden_layers=4, query_pre_attn_scalar=32, sliding_window=8,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "Gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        **COMMON, num_hidden_layers=6, query_pre_attn_scalar=32, sliding_window=8,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
}


def tiny_model(name: str):
    torch.manual_seed(0)
    model = TINY[name]().eval()
    with torch.no_grad():
        for param in model.parameters():  # norms too: a wrong (1 + w) must show
            param.normal_(0.0, 0.2)
    return model


@pytest.mark.usefixtures("reference_cpu_kernels")
@pytest.mark.parametrize("qtype", [GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0])
@pytest.mark.parametrize("name", list(TINY))
def test_gguf_gemma_matches_dequantized_reference(tmp_path, name, qtype):
    model = tiny_model(name)
    path = tmp_path / f"tiny-{name}.gguf"
    model.load_state_dict(write_gemma_gguf(model, path, qtype))

    runner = Runner(Which.GGUF(quantized_model_id=str(tmp_path), quantized_filename=path.name,
                               dtype="F32"), progress=False)
    try:
        assert runner.loaded.architecture.name == name
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
