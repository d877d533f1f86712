"""llama.cpp's reference outputs on the shipped models (`shared/golden/llamacpp.json`)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

GOLDEN_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "llamacpp.json"


@lru_cache
def golden(model_file: str) -> dict:
    return json.loads(GOLDEN_PATH.read_text())["models"][model_file]


def teacher_forced_agreement(loaded, cases: list[dict], kv_cache_dtype: str = "auto") -> float:
    """Fraction of positions where our argmax, fed llama.cpp's own greedy continuation, equals
    llama.cpp's next token (with the KV cache `kv_cache_dtype`, as `Engine` takes it)."""
    from mistralrs.engine.scoring import score

    agree = total = 0
    for case in cases:
        prompt, continuation = case["prompt_ids"], case["greedy_ids"]
        logits = score(loaded, prompt + continuation, kv_cache_dtype=kv_cache_dtype)
        predicted = logits[len(prompt) - 1:-1].argmax(-1).tolist()
        agree += sum(p == g for p, g in zip(predicted, continuation))
        total += len(continuation)
    return agree / total
