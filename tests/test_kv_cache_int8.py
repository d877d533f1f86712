"""The 8-bit KV cache (`pa_cache_type="int8"`, `mistralrs.kernels.kv_u8`) through the engine:
logits near transformers', and the scheduler's guarantees (batching, prefix caching,
copy-on-write, preemption) kept with the quantized blocks."""
from __future__ import annotations

import pytest
import torch

from hf_reference import max_diff, perturb_weights, random_ids
from mistralrs import Runner, Which
from mistralrs.engine import Engine, SamplingParams
from mistralrs.engine.model_runner import kv_bytes_per_block
from mistralrs.engine.scoring import score
from mistralrs.errors import EngineOptionError
from mistralrs.kernels import kv_u8
from mistralrs.kernels.cpu import reference_mode
from test_scheduler import assert_all_blocks_free, concurrently, greedy, one_at_a_time, prompts
from tiny_models import save_hf_model, tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama (GQA 2) with weights moved off their initial values, and its directory."""
    model = perturb_weights(tiny_llama(hidden_size=128, intermediate_size=256,
                                       max_position_embeddings=512), 0.05)
    return model, save_hf_model(model, tmp_path_factory.mktemp("tiny_int8"))


def int8_runner(directory, **options) -> Runner:
    return Runner(Which.Plain(model_id=str(directory)), pa_blk_size=8, pa_cache_type="int8",
                  progress=False, **options)


def test_logits_stay_near_transformers(tiny):
    """Prefill and cached decode steps through the 8-bit cache, against transformers' float32
    logits: off by the quantization (8 bits a key and value, the query too), far less than a
    cache that lost its scales or mixed up its rows would be. Both the native kernels and the
    torch path (the kernels off: it attends to the dequantized cache)."""
    model, directory = tiny
    ids = [256] + random_ids(299, seed=2)  # past one 128-row chunk of the kernel, two splits
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
    runner = int8_runner(directory)
    try:
        assert runner.engine.runner.kv_caches[0][0].dtype == kv_u8.DTYPE
        spread = expected.std().item()
        prefill = score(runner.loaded, ids, kv_cache_dtype="int8")
        decode = score(runner.loaded, ids, chunks=[20] + [1] * (len(ids) - 20),
                       kv_cache_dtype="int8")
        with reference_mode():
            torch_path = score(runner.loaded, ids, chunks=[20] + [1] * (len(ids) - 20),
                               kv_cache_dtype="int8")
        exact = score(runner.loaded, ids)  # the float32 cache: the float summation order only
    finally:
        runner.shutdown()
    assert max_diff(exact, expected) < 1e-4
    for ours in (prefill, decode, torch_path):
        assert 1e-4 < max_diff(ours, expected) < 0.1 * spread  # here ~0.035 * spread
        agree = (ours.argmax(-1) == expected.argmax(-1)).float().mean().item()
        assert agree > 0.95


def test_the_cache_takes_about_a_quarter_of_float32s_bytes(tiny):
    model, directory = tiny
    runner = int8_runner(directory)
    try:
        loaded = runner.loaded
        float32 = kv_bytes_per_block(loaded.model, 8, torch.float32)
        int8 = kv_bytes_per_block(loaded.model, 8, torch.float32, requested="int8")
    finally:
        runner.shutdown()
    head_dim = 128 // 4
    assert int8 * 4 * head_dim == float32 * (head_dim + 4)


def test_batching_prefix_caching_and_forks_keep_the_outputs(tiny):
    """12 concurrent requests as one at a time; a request sharing a long prefix reuses its
    blocks and answers as without the cache; the two greedy choices of one request (forks that
    share blocks, copied on write) are the single answer."""
    _, directory = tiny
    runner = int8_runner(directory)
    uncached = int8_runner(directory, prefix_cache_n=0)
    try:
        batch = prompts(12)
        assert concurrently(runner, batch, 20) == one_at_a_time(runner, batch, 20)

        shared = prompts(1, seed=5)[0] * 6
        first, second = shared + [1, 2, 3], shared + [4, 5]
        expected = one_at_a_time(uncached, [first, second], 10)
        assert one_at_a_time(runner, [first], 10) == expected[:1]
        before = runner.engine.stats()["prefill_tokens"]
        assert one_at_a_time(runner, [second], 10) == expected[1:]
        assert runner.engine.stats()["prefill_tokens"] - before == len(second) - len(shared) // 8 * 8

        prompt = prompts(3, seed=7)[2]  # 17 tokens: the forks share a partly filled block
        both = runner.engine.submit(prompt, SamplingParams(max_tokens=12, temperature=0.0, n=2))
        choices = [c.token_ids for c in both.result().choices]
        assert choices == one_at_a_time(uncached, [prompt], 12) * 2
        assert_all_blocks_free(runner)
    finally:
        runner.shutdown()
        uncached.shutdown()


def test_preemption_keeps_the_outputs(tiny):
    _, directory = tiny
    batch = prompts(8, seed=3)
    roomy = int8_runner(directory)
    try:
        expected = one_at_a_time(roomy, batch, 24)
        longest = max(len(p) for p in batch) + 24
        block_bytes = kv_bytes_per_block(roomy.loaded.model, 4, torch.float32, requested="int8")
        engine = Engine(roomy.loaded, kv_cache_bytes=block_bytes * (longest // 4 + 2),
                        block_size=4, kv_cache_dtype="int8")
        try:
            results = [h.result().choices[0].token_ids
                       for h in [engine.submit(p, greedy(24)) for p in batch]]
            stats = engine.stats()
            assert stats["preemptions"] > 0 and stats["free_blocks"] == stats["total_blocks"]
        finally:
            engine.shutdown()
    finally:
        roomy.shutdown()
    assert results == expected


def test_unknown_or_unsupported_cache_types_are_refused(tiny):
    _, directory = tiny
    with pytest.raises(EngineOptionError, match="must be one of auto, int8; got 'fp8'"):
        Runner(Which.Plain(model_id=str(directory)), pa_cache_type="fp8", progress=False)
    with pytest.raises(EngineOptionError, match="CPU kernels only"):
        kv_u8.check_supported(torch.device("cuda"), values_in_keys=False)
    with pytest.raises(EngineOptionError, match="values are a view into their keys"):
        kv_u8.check_supported(torch.device("cpu"), values_in_keys=True)
