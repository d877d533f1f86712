"""Load test of `mistralrs serve`: requests per second and time to first token at several
numbers of concurrent streaming chat clients.

    python bench/server_load.py                       # starts `mistralrs serve` (SmolLM2) itself
    python bench/server_load.py --url http://host:8080 --concurrency 1 8 32

Each client sends `--requests` streaming chat requests one after the other (greedy,
`--max-tokens` tokens, end of sequence banned so every answer has the same length). Time to
first token is measured at the client: from sending the request to its first `data:` event.
Only loopback or your own hosts: this sends real traffic.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import numpy as np


@dataclass
class Result:
    ttft: float
    latency: float
    completion_tokens: int


async def one_request(http: httpx.AsyncClient, url: str, client: int, max_tokens: int,
                      eos_ids: list[int]) -> Result:
    body = {"model": "", "messages": [{"role": "user", "content":
                                       f"Client {client}: tell me about the city of Berlin."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "logit_bias": {str(t): -100 for t in eos_ids}}
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            ttft = ttft if ttft is not None else time.perf_counter() - start
            payload = line.removeprefix("data: ")
            if payload != "[DONE]" and (usage := json.loads(payload).get("usage")):
                tokens = usage["completion_tokens"]
    return Result(ttft, time.perf_counter() - start, tokens)


async def run_level(url: str, concurrency: int, requests: int, max_tokens: int,
                    eos_ids: list[int]) -> dict[str, float]:
    async def client(i: int) -> list[Result]:
        return [await one_request(http, url, i, max_tokens, eos_ids) for _ in range(requests)]

    async with httpx.AsyncClient(timeout=None,
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(i) for i in range(concurrency)))
                   for r in rs]
        wall = time.perf_counter() - start
    ttft = np.array([r.ttft for r in results])
    return {"concurrency": concurrency, "requests": len(results), "seconds": wall,
            "requests_per_second": len(results) / wall,
            "output_tokens_per_second": sum(r.completion_tokens for r in results) / wall,
            "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p99": float(np.percentile(ttft, 99)),
            "latency_p50": float(np.percentile([r.latency for r in results], 50))}


@contextlib.contextmanager
def started_server(max_seqs: int):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "mistralrs.cli", "serve", "--host",
                                "127.0.0.1", "--port", str(port), "--max-seqs", str(max_seqs),
                                "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"mistralrs serve exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start `mistralrs serve`)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--eos-ids", type=int, nargs="*", default=[0, 1, 2],
                        help="token ids to ban (SmolLM2's end-of-text, <|im_start|>, <|im_end|>)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(started_server(max(args.concurrency)))
        asyncio.run(run_level(url, 1, 1, 2, args.eos_ids))  # warm-up
        print("| clients | requests | req/s | output tok/s | TTFT p50 (s) | TTFT p99 (s) | "
              "latency p50 (s) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for concurrency in args.concurrency:
            r = asyncio.run(run_level(url, concurrency, args.requests, args.max_tokens,
                                      args.eos_ids))
            print(f"| {concurrency} | {r['requests']} | {r['requests_per_second']:.2f} | "
                  f"{r['output_tokens_per_second']:.1f} | {r['ttft_p50']:.2f} | "
                  f"{r['ttft_p99']:.2f} | {r['latency_p50']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
