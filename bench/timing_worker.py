"""Times one engine on one GGUF file in a fresh process and prints one JSON line.

Run by `vs_llamacpp.py`, once with this project's Python (`--engine ours`) and once with the
llama.cpp benchmark venv's Python (`--engine llamacpp`, which cannot import `mistralrs`), on the
same prompt ids, thread count and context size. Both engines decode greedily and ignore EOS.

Measured, best of `--repeats`:
- load: from the load call to an engine ready to take a request (file already in the page cache);
- first request: the first, short generation after loading (one-time warm-ups happen here);
- prefill: prompt tokens / time from submitting the prompt to its first sampled token;
- decode: generated tokens after the first / their time;
- memory: peak RSS of the process, and RSS just before loading (the libraries alone, for us
  torch and the native CPU kernels, loaded before the baseline as llama.cpp's are).
"""
from __future__ import annotations

import argparse
import json
import resource
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_ours(model: str, prompt: list[int], gen_tokens: int, threads: int, context: int,
                 repeats: int) -> dict:
    from pathlib import Path

    import torch

    from mistralrs.engine import Engine, SamplingParams
    from mistralrs.engine.model_runner import kv_bytes_per_block
    from mistralrs.kernels.cpu import library
    from mistralrs.loading.model_loader import load_gguf

    torch.set_num_threads(threads)
    block_size = 32
    library()  # the native CPU kernels (built on first use), a library like llama.cpp's
    rss_before = _rss_mib()
    start = time.perf_counter()
    loaded = load_gguf(str(Path(model).parent), Path(model).name, device=torch.device("cpu"),
                       progress=False)
    kv_bytes = (kv_bytes_per_block(loaded.model, block_size, loaded.dtype, loaded.device)
                * (context // block_size))
    engine = Engine(loaded, max_seqs=1, kv_cache_bytes=kv_bytes, block_size=block_size,
                    enable_prefix_caching=False)
    load_s = time.perf_counter() - start

    def generate(ids: list[int], n: int):
        return engine.submit(ids, SamplingParams(max_tokens=n, temperature=0.0,
                                                 ignore_eos=True)).result()

    start = time.perf_counter()
    generate(prompt[:16], 2)
    first_request_s = time.perf_counter() - start
    prefill, decode, tokens = [], [], []
    for _ in range(repeats):
        out = generate(prompt, 1)
        prefill.append(len(prompt) / (out.first_token - out.submitted))
        out = generate(prompt, gen_tokens + 1)
        decode.append(gen_tokens / (out.finished - out.first_token))
        tokens = out.choices[0].token_ids
    engine.shutdown()
    return dict(load_s=load_s, first_request_s=first_request_s, prefill_tok_s=max(prefill),
                decode_tok_s=max(decode), tokens=tokens, rss_before_load_mib=rss_before,
                peak_rss_mib=_peak_rss_mib(), kv_cache_mib=kv_bytes / 2**20)


def measure_llamacpp(model: str, prompt: list[int], gen_tokens: int, threads: int, context: int,
                     repeats: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    rss_before = _rss_mib()
    start = time.perf_counter()
    llm = Llama(model_path=model, n_ctx=context, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - start

    vocab = llm.n_vocab()

    def greedy_next() -> int:
        """Argmax of the last evaluated token's logits (llama.cpp keeps only those)."""
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab,))))

    def prefill_then_first(ids: list[int]) -> int:
        llm.reset()
        llm.eval(ids)
        return greedy_next()

    start = time.perf_counter()
    llm.eval([prefill_then_first(prompt[:16])])
    first_request_s = time.perf_counter() - start
    prefill, decode, tokens = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        prefill_then_first(prompt)
        prefill.append(len(prompt) / (time.perf_counter() - start))
        tokens = [prefill_then_first(prompt)]
        start = time.perf_counter()
        for _ in range(gen_tokens):
            llm.eval([tokens[-1]])
            tokens.append(greedy_next())
        decode.append(gen_tokens / (time.perf_counter() - start))
    return dict(load_s=load_s, first_request_s=first_request_s, prefill_tok_s=max(prefill),
                decode_tok_s=max(decode), tokens=tokens, rss_before_load_mib=rss_before,
                peak_rss_mib=_peak_rss_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["ours", "llamacpp"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-json", required=True, help="a JSON list of prompt token ids")
    parser.add_argument("--gen-tokens", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    args = parser.parse_args()
    with open(args.prompt_json) as f:
        prompt = json.load(f)
    measure = measure_ours if args.engine == "ours" else measure_llamacpp
    result = measure(args.model, prompt, args.gen_tokens, args.threads, args.context,
                     args.repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
