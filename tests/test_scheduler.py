"""Continuous batching, prefix caching and preemption give exactly the outputs of running each
request alone (fp32 CPU, greedy)."""
from __future__ import annotations

import threading

import pytest
import torch

from mistralrs import Runner, Which
from mistralrs.default_model import default_model_path
from mistralrs.engine import Engine, SamplingParams
from mistralrs.engine.model_runner import _zeros, kv_bytes_per_block
from mistralrs.errors import InvalidRequestError
from tiny_models import save_hf_model, tiny_llama


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_hf_model(tiny_llama(), tmp_path_factory.mktemp("tiny"))


def prompts(count: int, vocab: int = 256, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (3 + 7 * i,), generator=g).tolist() for i in range(count)]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def one_at_a_time(runner: Runner, prompt_list, max_tokens):
    return [runner.engine.submit(p, greedy(max_tokens)).result().choices[0].token_ids
            for p in prompt_list]


def concurrently(runner: Runner, prompt_list, max_tokens):
    results = [None] * len(prompt_list)
    start = threading.Barrier(len(prompt_list))

    def worker(i):
        start.wait()
        results[i] = runner.engine.submit(prompt_list[i], greedy(max_tokens)).result()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompt_list))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r.choices[0].token_ids for r in results]


def assert_all_blocks_free(runner: Runner):
    stats = runner.engine.stats()
    assert stats["running"] == 0 and stats["waiting"] == 0
    assert stats["free_blocks"] == stats["total_blocks"]


def test_concurrent_requests_match_sequential_tiny(tiny_model_dir):
    runner = Runner(Which.Plain(model_id=str(tiny_model_dir)), pa_blk_size=8, progress=False)
    try:
        batch = prompts(12)
        alone = one_at_a_time(runner, batch, 20)
        together = concurrently(runner, batch, 20)
        assert together == alone
        assert_all_blocks_free(runner)
    finally:
        runner.shutdown()


def test_concurrent_requests_match_sequential_smollm2():
    path = default_model_path()
    runner = Runner(Which.GGUF(quantized_model_id=str(path.parent), quantized_filename=path.name),
                    progress=False)
    try:
        batch = prompts(12, vocab=49152, seed=1)
        alone = one_at_a_time(runner, batch, 8)
        together = concurrently(runner, batch, 8)
        assert together == alone
        assert_all_blocks_free(runner)
    finally:
        runner.shutdown()


def test_submit_many_admits_the_prompts_in_one_step(tiny_model_dir, monkeypatch):
    runner = Runner(Which.Plain(model_id=str(tiny_model_dir)), pa_blk_size=8, progress=False)
    try:
        batch = prompts(4)
        steps = []
        run = runner.engine.runner.run
        monkeypatch.setattr(runner.engine.runner, "run", lambda s, *a: steps.append(s) or run(s, *a))
        handles = runner.engine.submit_many(batch, greedy(6))
        together = [h.result().choices[0].token_ids for h in handles]
        # one step prefills all four prompts, then five decode steps run them side by side
        assert [len(s) for s in steps] == [4] * 6
        assert sum(item.num_new_tokens for item in steps[0]) == sum(map(len, batch))
        assert together == one_at_a_time(runner, batch, 6)
        with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
            runner.engine.submit_many([batch[0], [0, 300]], greedy(6))
        assert_all_blocks_free(runner)  # nothing of the rejected batch was queued
    finally:
        runner.shutdown()


def test_prefix_cache_reuses_blocks_and_keeps_outputs(tiny_model_dir):
    shared = prompts(1, seed=5)[0] * 6  # a long shared prefix (18 tokens x 6)
    first, second = shared + [1, 2, 3], shared + [4, 5]
    cached = Runner(Which.Plain(model_id=str(tiny_model_dir)), pa_blk_size=8, progress=False)
    uncached = Runner(Which.Plain(model_id=str(tiny_model_dir)), pa_blk_size=8,
                      prefix_cache_n=0, progress=False)
    try:
        expected = one_at_a_time(uncached, [first, second], 10)
        assert one_at_a_time(cached, [first], 10) == expected[:1]
        before = cached.engine.stats()["prefill_tokens"]
        assert one_at_a_time(cached, [second], 10) == expected[1:]
        prefill = cached.engine.stats()["prefill_tokens"] - before
        reusable = (len(shared) // 8) * 8
        assert prefill == len(second) - reusable
        assert uncached.engine.stats()["reused_prefix_tokens"] == 0
        assert_all_blocks_free(cached)
    finally:
        cached.shutdown()
        uncached.shutdown()


def test_preemption_under_a_small_kv_budget_keeps_outputs(tiny_model_dir):
    batch = prompts(8, seed=3)
    roomy = Runner(Which.Plain(model_id=str(tiny_model_dir)), pa_blk_size=4, progress=False)
    try:
        expected = one_at_a_time(roomy, batch, 24)
    finally:
        roomy.shutdown()
    # Room for the longest request alone, far from all of them at once.
    longest = max(len(p) for p in batch) + 24
    block_bytes = kv_bytes_per_block(roomy.loaded.model, 4, torch.float32)
    engine = Engine(roomy.loaded, kv_cache_bytes=block_bytes * (longest // 4 + 2), block_size=4)
    try:
        handles = [engine.submit(p, greedy(24)) for p in batch]
        results = [h.result().choices[0].token_ids for h in handles]
        assert engine.stats()["preemptions"] > 0
        assert results == expected
        stats = engine.stats()
        assert stats["free_blocks"] == stats["total_blocks"]
    finally:
        engine.shutdown()


@pytest.mark.parametrize("shape", [(4, 32, 2, 16), (0, 32, 2, 16), (3, 8, 1, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cpu_kv_cache_memory_is_zeroed_like_torch_zeros(shape, dtype):
    """The CPU caches live in anonymous memory the kernel zeroes lazily; they must still be
    torch.zeros of the shape and dtype, writable, empty shapes included."""
    cache = _zeros(shape, dtype, torch.device("cpu"))
    assert torch.equal(cache, torch.zeros(shape, dtype=dtype))
    assert cache.dtype == dtype and cache.is_contiguous()
    if cache.numel():
        cache[-1] = 1
        assert cache.sum().item() == cache[-1].numel()
