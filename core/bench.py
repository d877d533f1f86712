"""`mistralrs bench`: prefill and decode throughput of the engine on synthetic prompts."""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass

from mistralrs.engine import Engine, SamplingParams


@dataclass
class BenchResult:
    prompt_tokens: int
    generated_tokens: int
    concurrency: int
    prefill_tok_per_sec: float
    """One request alone: prompt tokens / time to its first token."""
    ttft_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_max: float
    """Time to first token of the concurrent requests (queueing included)."""
    decode_tok_per_sec_per_stream: float
    """Mean over the concurrent requests of (tokens after the first) / (time after the first)."""
    decode_tok_per_sec_aggregate: float
    """All tokens generated after the first ones / wall time of the decode phase."""
    wall_sec: float

    def to_dict(self) -> dict:
        return asdict(self)


def median_result(runs: list[BenchResult]) -> BenchResult:
    """Field by field, the median of repeated runs of one configuration (the machines these
    figures come from drift by tens of percent within minutes)."""
    fields = runs[0].to_dict()
    return BenchResult(**{name: statistics.median(getattr(r, name) for r in runs)
                          if isinstance(value, float) else value
                          for name, value in fields.items()})


def random_prompts(count: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Random token prompts, distinct from the first token on, so no prefix is shared."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(count)]


def aggregate_decode_rate(outputs: list) -> float:
    """Tokens generated after the first ones by requests that decoded side by side, per second
    of the decode phase (the first first token to the last finish)."""
    decode_wall = max(o.finished for o in outputs) - min(o.first_token for o in outputs)
    return sum(o.completion_tokens - 1 for o in outputs) / max(decode_wall, 1e-9)


def run_benchmark(engine: Engine, prompt_tokens: int = 128, generated_tokens: int = 128,
                  concurrency: int = 1, seed: int = 0) -> BenchResult:
    vocab = engine.loaded.tokenizer.vocab_size
    greedy = SamplingParams(max_tokens=generated_tokens, temperature=0.0, ignore_eos=True)
    warmup, single, *batch = random_prompts(concurrency + 2, prompt_tokens, vocab, seed)
    engine.submit(warmup, SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)).result()

    alone = engine.submit(single, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    out = alone.result()
    prefill = prompt_tokens / (out.first_token - out.submitted)

    # Submitted together, the streams are admitted in one step (within the scheduler's token
    # budget), so that their prefills are not timed as decode: the decode phase below is the
    # streams decoding side by side, as llama.cpp's batched-bench measures it.
    start = time.perf_counter()
    outputs = [h.result() for h in engine.submit_many(batch, greedy)]
    wall = time.perf_counter() - start
    ttft = [(o.first_token - o.submitted) * 1e3 for o in outputs]
    per_stream = [(o.completion_tokens - 1) / max(o.finished - o.first_token, 1e-9)
                  for o in outputs]
    return BenchResult(
        prompt_tokens=prompt_tokens,
        generated_tokens=generated_tokens,
        concurrency=concurrency,
        prefill_tok_per_sec=prefill,
        ttft_ms_mean=statistics.mean(ttft),
        ttft_ms_p50=statistics.median(ttft),
        ttft_ms_max=max(ttft),
        decode_tok_per_sec_per_stream=statistics.mean(per_stream),
        decode_tok_per_sec_aggregate=aggregate_decode_rate(outputs),
        wall_sec=wall,
    )
