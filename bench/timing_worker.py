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
  torch and the native CPU kernels, loaded before the baseline as llama.cpp's are);
- with `--streams-json` (after the memory figures are taken): the decode rate of one stream
  and the aggregate decode rate of all those prompts decoding side by side, each prompt with
  its own sequence in one batch (llama.cpp: one `llama_decode` per step over all sequences,
  as its batched-bench does), tokens after the first / the decode phase's time.
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
                 repeats: int, streams: list[list[int]], stream_tokens: int) -> dict:
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
    result = dict(load_s=load_s, first_request_s=first_request_s, prefill_tok_s=max(prefill),
                  decode_tok_s=max(decode), tokens=tokens, rss_before_load_mib=rss_before,
                  peak_rss_mib=_peak_rss_mib(), kv_cache_mib=kv_bytes / 2**20)
    if streams:
        result.update(_streams_ours(loaded, streams, stream_tokens, block_size, repeats))
    return result


def _streams_ours(loaded, streams: list[list[int]], gen_tokens: int, block_size: int,
                  repeats: int) -> dict:
    from mistralrs.bench import aggregate_decode_rate
    from mistralrs.engine import Engine, SamplingParams
    from mistralrs.engine.model_runner import kv_bytes_per_block

    blocks = len(streams) * -(-(max(map(len, streams)) + gen_tokens) // block_size)
    engine = Engine(loaded, max_seqs=len(streams), block_size=block_size,
                    kv_cache_bytes=kv_bytes_per_block(loaded.model, block_size, loaded.dtype,
                                                      loaded.device) * blocks,
                    enable_prefix_caching=False)
    params = SamplingParams(max_tokens=gen_tokens, temperature=0.0, ignore_eos=True)
    one, together = [], []
    for _ in range(repeats + 1):  # the first round records the decode steps
        one.append(aggregate_decode_rate([engine.submit(streams[0], params).result()]))
        together.append(aggregate_decode_rate(
            [h.result() for h in engine.submit_many(streams, params)]))
    engine.shutdown()
    return dict(one_stream_tok_s=max(one[1:]), streams_tok_s=max(together[1:]))


def measure_llamacpp(model: str, prompt: list[int], gen_tokens: int, threads: int, context: int,
                     repeats: int, streams: list[list[int]], stream_tokens: int) -> dict:
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
    result = dict(load_s=load_s, first_request_s=first_request_s, prefill_tok_s=max(prefill),
                  decode_tok_s=max(decode), tokens=tokens, rss_before_load_mib=rss_before,
                  peak_rss_mib=_peak_rss_mib())
    if streams:
        rates = [[_streams_llamacpp(llm, s, stream_tokens, threads) for s in ([streams[0]], streams)]
                 for _ in range(repeats + 1)]
        result.update(one_stream_tok_s=max(r[0] for r in rates[1:]),
                      streams_tok_s=max(r[1] for r in rates[1:]))
    return result


def _streams_llamacpp(llm, streams: list[list[int]], gen_tokens: int, threads: int) -> float:
    """Aggregate greedy decode rate of `streams` in one batch of sequences, in a context of
    their own (llama.cpp's KV cache split by sequence, its faster choice for unshared prompts:
    `kv_unified=False`)."""
    import llama_cpp as lc
    import numpy as np

    n, longest = len(streams), max(map(len, streams))
    params = lc.llama_context_default_params()
    params.n_ctx = n * (longest + gen_tokens + 16)
    params.n_batch = n * longest
    params.n_ubatch = 512
    params.n_seq_max = n
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = False
    ctx = lc.llama_init_from_model(llm._model.model, params)
    batch = lc.llama_batch_init(n * longest, 0, 1)
    vocab = llm.n_vocab()

    def decode(items: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """Evaluate (token, position, sequence, wants logits) items; the greedy next tokens."""
        batch.n_tokens = len(items)
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.logits[i] = token, pos, logits
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(n, vocab)).argmax(-1)

    try:
        tokens = decode([(t, p, s, p == len(ids) - 1) for s, ids in enumerate(streams)
                         for p, t in enumerate(ids)])
        start = time.perf_counter()
        for step in range(gen_tokens - 1):
            tokens = decode([(int(tokens[s]), len(ids) + step, s, True)
                             for s, ids in enumerate(streams)])
        return n * (gen_tokens - 1) / (time.perf_counter() - start)
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["ours", "llamacpp"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-json", required=True, help="a JSON list of prompt token ids")
    parser.add_argument("--gen-tokens", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--streams-json", help="a JSON list of prompts (token id lists) to "
                        "decode one alone and all side by side")
    parser.add_argument("--stream-tokens", type=int, default=128,
                        help="tokens each of those prompts generates")
    args = parser.parse_args()
    with open(args.prompt_json) as f:
        prompt = json.load(f)
    streams = []
    if args.streams_json:
        with open(args.streams_json) as f:
            streams = json.load(f)
    measure = measure_ours if args.engine == "ours" else measure_llamacpp
    result = measure(args.model, prompt, args.gen_tokens, args.threads, args.context,
                     args.repeats, streams, args.stream_tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
