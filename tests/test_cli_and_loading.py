"""The `mistralrs run` command, dtype selection and GGUF with an external tokenizer."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from gguf import GGMLQuantizationType

from mistralrs import ChatCompletionRequest, CompletionRequest, ModelDType, Runner, Which
from mistralrs.cli import main
from mistralrs.engine.scoring import score
from mistralrs.errors import EngineOptionError
from mistralrs.loading.model_loader import load_plain
from gguf_writer import write_llama_gguf
from tiny_models import CHAT_TEMPLATE, save_hf_model, tiny_llama, write_byte_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_llama(vocab_size=288, max_position_embeddings=128)
    return model, save_hf_model(model, tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("flag, value, message", [
    ("--top-k", "-5", "top_k must be in [-1, "),
    ("--top-p", "0", "top_p must be in (0, 1], got 0.0"),
    ("--temperature", "-1", "temperature must be in [0.0, "),
    ("--max-tokens", "-2", "max_tokens must be >= 0, got -2"),
])
def test_run_refuses_bad_sampling_flags_before_loading(flag, value, message, capsys):
    """The model does not exist: the sampling error shows the flags were checked first."""
    assert main(["run", "-m", "/nonexistent", "-i", "hello", flag, value]) == 2
    assert f"error: {message}" in capsys.readouterr().err


def test_run_one_prompt(tiny, capsys):
    _, path = tiny
    assert main(["run", "-m", str(path), "-i", "hello", "--max-tokens", "5"]) == 0
    runner = Runner(Which.Plain(model_id=str(path)), progress=False)
    try:
        expected = runner.send_chat_completion_request(ChatCompletionRequest(
            messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0))
    finally:
        runner.shutdown()
    assert capsys.readouterr().out == expected.choices[0].message.content + "\n"


def test_interactive_chat_reads_turns_until_an_empty_line(tiny):
    _, path = tiny
    done = subprocess.run([sys.executable, "-m", "mistralrs.cli", "run", "-m", str(path),
                           "--max-tokens", "3"], input="hi\nand again\n\n", text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("> ") == 3  # two turns answered, then the empty line quits


def test_cli_errors_are_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mistralrs.cli", "run", "-m",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


@pytest.mark.parametrize("dtype, torch_dtype", [(ModelDType.BF16, torch.bfloat16),
                                                (ModelDType.F16, torch.float16)])
def test_dtype_selection(tiny, dtype, torch_dtype):
    model, path = tiny
    runner = Runner(Which.Plain(model_id=str(path), dtype=dtype), progress=False)
    try:
        assert runner.loaded.dtype == torch_dtype
        assert runner.loaded.model.lm_head.weight.dtype == torch_dtype
        ids = list(range(65, 85))
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0]
        assert (score(runner.loaded, ids) - expected).abs().max().item() < 0.1
    finally:
        runner.shutdown()


def test_auto_dtype_is_fp32_on_cpu(tiny):
    _, path = tiny
    assert load_plain(str(path), device=torch.device("cpu"), progress=False).dtype == torch.float32


def test_gguf_with_tokenizer_from_another_repository(tiny, tmp_path):
    model, _ = tiny
    write_llama_gguf(model, tmp_path / "m.gguf", GGMLQuantizationType.Q8_0)
    tok_dir = tmp_path / "tokenizer_repo"
    tok_dir.mkdir()
    write_byte_tokenizer(tok_dir)
    runner = Runner(Which.GGUF(quantized_model_id=str(tmp_path), quantized_filename="m.gguf",
                               tok_model_id=str(tok_dir)), progress=False)
    try:
        assert runner.tokenizer.chat_template == CHAT_TEMPLATE  # the GGUF has none
        res = runner.send_chat_completion_request(ChatCompletionRequest(
            messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0,
            n_choices=2))
        assert len(res.choices) == 2
        assert res.choices[0].message.content == res.choices[1].message.content  # greedy
    finally:
        runner.shutdown()


def test_completion_echo_prompt(tiny):
    _, path = tiny
    runner = Runner(Which.Plain(model_id=str(path)), progress=False)
    try:
        res = runner.send_completion_request(CompletionRequest(
            prompt="abc", max_tokens=3, temperature=0, echo_prompt=True))
        assert res.choices[0].text.startswith("abc")
    finally:
        runner.shutdown()


@pytest.mark.parametrize("option, value", [("max_seqs", 0), ("pa_blk_size", 0), ("pa_blk_size", -16),
                                           ("pa_gpu_mem", 0), ("max_seqs", 2.5)])
def test_bad_engine_sizes_are_refused_before_loading(tmp_path, option, value):
    """The model directory does not exist: an error about the size shows it was checked first."""
    with pytest.raises(EngineOptionError, match=f"{option} must be a positive integer, got {value}"):
        Runner(Which.Plain(model_id=str(tmp_path / "missing")), progress=False, **{option: value})
