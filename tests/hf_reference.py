"""transformers as the oracle for an architecture plugin: shared checks for plugin tests."""
from __future__ import annotations

import torch

from mistralrs import CompletionRequest, Runner, Which
from mistralrs.engine.scoring import score
from tiny_models import save_hf_model


def random_ids(n: int, seed: int, vocab: int = 256) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def perturb_weights(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every weight away from its initial value (biases start at 0 and norm weights at 1,
    which would hide a missing bias or norm)."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model


def incremental_reference(model, ids: list[int], prompt_len: int) -> torch.Tensor:
    """transformers' logits for tokens prompt_len.. fed one at a time through its KV cache
    (not a full forward: dynamic rope scaling depends on the length at each step)."""
    with torch.no_grad():
        out = model(torch.tensor([ids[:prompt_len]]), use_cache=True)
        cache, rows = out.past_key_values, []
        for token in ids[prompt_len:]:
            out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            rows.append(out.logits[0, -1])
    return torch.stack(rows)


def check_greedy_matches_generate(reference, model_dir, new_tokens: int = 32) -> None:
    """Our greedy tokens through `Runner` (the saved `model_dir`) equal transformers' `generate`."""
    prompt = [256, 72, 101, 108, 108, 111]
    with torch.no_grad():
        generated = reference.generate(torch.tensor([prompt]), max_new_tokens=new_tokens,
                                       do_sample=False)
    runner = Runner(Which.Plain(model_id=str(model_dir)), progress=False)
    try:
        out = runner.engine.submit(prompt, CompletionRequest(
            prompt, max_tokens=new_tokens, temperature=0).sampling_params()).result()
    finally:
        runner.shutdown()
    assert out.choices[0].token_ids == generated[0, len(prompt):].tolist()


def check_against_transformers(reference, directory, architecture: str,
                               prompt_len: int = 12, new_tokens: int = 32) -> None:
    """Save `reference`, load it through `Runner`, and check: the architecture chosen; logits
    within 1e-4 of transformers on a full prefill, on a chunked prefill and on every cached
    decode step of transformers' own greedy `generate`; and the same greedy tokens."""
    path = save_hf_model(reference, directory)
    prompt = [256] + random_ids(prompt_len - 1, seed=1)
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=new_tokens,
                                 do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
    generated = out.sequences[0, len(prompt):].tolist()
    ids = prompt + generated
    with torch.no_grad():
        full = reference(torch.tensor([ids])).logits[0]
    runner = Runner(Which.Plain(model_id=str(path)), progress=False)
    try:
        assert runner.loaded.architecture.name == architecture
        assert max_diff(score(runner.loaded, ids), full) < 1e-4
        third = len(ids) // 3
        assert max_diff(score(runner.loaded, ids, chunks=[third, third, len(ids) - 2 * third]),
                        full) < 1e-4
        steps = score(runner.loaded, ids[:-1], chunks=[len(prompt)] + [1] * (len(generated) - 1))
        assert max_diff(steps[len(prompt) - 1:], torch.cat(out.logits)) < 1e-4
        greedy = runner.engine.submit(prompt, CompletionRequest(
            prompt, max_tokens=new_tokens, temperature=0).sampling_params()).result()
    finally:
        runner.shutdown()
    assert greedy.choices[0].token_ids == generated


def check_gguf_against_safetensors(model, gguf_dir, gguf_name: str, architecture: str,
                                   hf_dir) -> None:
    """`model` (transformers, holding the weights a GGUF reader should reconstruct) saved as
    safetensors in `hf_dir` and already written as GGUF `gguf_dir/gguf_name`: the GGUF loads as
    `architecture`, and its logits (prefill then cached decode) are within 1e-4 of the
    safetensors path and of transformers. The GGUF model runs the exact float32 references (the
    native CPU kernels' int8 activations are checked elsewhere)."""
    from mistralrs.kernels.cpu import reference_mode
    from mistralrs.loading.model_loader import load_gguf, load_plain

    options = dict(dtype=torch.float32, device=torch.device("cpu"), progress=False)
    safetensors = load_plain(str(save_hf_model(model, hf_dir)), **options)
    with reference_mode():
        gguf = load_gguf(str(gguf_dir), gguf_name, **options)
    assert gguf.architecture.name == architecture
    ids = random_ids(30, seed=2)
    ours = score(gguf, ids, chunks=[20] + [1] * 10)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
    assert max_diff(ours, score(safetensors, ids)) < 1e-4
    assert max_diff(ours, expected) < 1e-4
