"""The `mistralrs` command: `run` (chat in the terminal), `serve` (the HTTP server), `plugins`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mistralrs.errors import MistralRsError


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (default: the embedded SmolLM2-135M-Instruct)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("-m", "--model-id", help="Hugging Face model directory or hub id")
    source.add_argument("-f", "--file", nargs="+", help="GGUF file(s) (several for a split model)")
    group.add_argument("-t", "--tok-model-id", help="take the tokenizer from this repo/directory")
    group.add_argument("-a", "--arch", help="architecture name (e.g. Llama); default: detected")
    group.add_argument("--dtype", default="Auto", choices=["Auto", "F32", "BF16", "F16"])
    group.add_argument("--chat-template", help="chat template literal or .jinja/.json file")
    group.add_argument("--max-seqs", type=_positive, default=16, metavar="N")
    group.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    group.add_argument("--pa-cache-type", default="auto", metavar="{auto,int8}",
                       help="KV cache dtype: auto, or int8 (8-bit keys and values on the CPU, "
                            "half the memory of float16)")


def _which(args: argparse.Namespace):
    from mistralrs import ModelDType, Which
    from mistralrs.default_model import default_model_path

    dtype = ModelDType(args.dtype)
    if args.model_id:
        return Which.Plain(model_id=args.model_id, arch=args.arch, dtype=dtype)
    paths = [Path(f) for f in args.file] if args.file else [default_model_path()]
    return Which.GGUF(quantized_model_id=str(paths[0].parent),
                      quantized_filename=[p.name for p in paths] if len(paths) > 1 else paths[0].name,
                      tok_model_id=args.tok_model_id, dtype=dtype)


def _runner(args: argparse.Namespace):
    from mistralrs import Runner

    return Runner(_which(args), max_seqs=args.max_seqs, chat_template=args.chat_template,
                  device=args.device, pa_cache_type=args.pa_cache_type)


def _sampling_options(args: argparse.Namespace) -> dict:
    """The request fields that `run`'s sampling flags set."""
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k)


def _stream_answer(runner, messages, args) -> str:
    from mistralrs import ChatCompletionRequest

    request = ChatCompletionRequest(messages=messages, stream=True, **_sampling_options(args))
    answer = []
    for chunk in runner.send_chat_completion_request(request):
        for choice in chunk.choices:
            print(choice.delta.content, end="", flush=True)
            answer.append(choice.delta.content)
    print()
    return "".join(answer)


def _stream_completion(runner, prompt: str, args) -> None:
    from mistralrs import CompletionRequest

    print(prompt, end="", flush=True)
    request = CompletionRequest(prompt=prompt, stream=True, **_sampling_options(args))
    for chunk in runner.send_completion_request(request):
        for choice in chunk.choices:
            print(choice.text, end="", flush=True)
    print()


def _check_sampling_flags(args: argparse.Namespace) -> None:
    """The sampling flags, refused before the model loads with the error a request carrying
    them gets (the flags name no token ids, so no vocabulary is needed)."""
    from mistralrs import CompletionRequest

    CompletionRequest(prompt="", **_sampling_options(args)).sampling_params().validate(0)


def cmd_run(args: argparse.Namespace) -> int:
    _check_sampling_flags(args)
    runner = _runner(args)
    try:
        if runner.tokenizer.chat_template is None:
            # A base model: continue text instead of chatting.
            print("(no chat template: completing the prompt)", file=sys.stderr)
            if args.interactive_prompt is not None:
                _stream_completion(runner, args.interactive_prompt, args)
                return 0
            while (line := _read_line()) is not None:
                _stream_completion(runner, line, args)
            return 0
        if args.interactive_prompt is not None:
            _stream_answer(runner, [{"role": "user", "content": args.interactive_prompt}], args)
            return 0
        print("Chat with the model; an empty line or Ctrl-D quits.", file=sys.stderr)
        messages: list[dict[str, str]] = []
        while (line := _read_line()) is not None:
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant",
                             "content": _stream_answer(runner, messages, args)})
        return 0
    finally:
        runner.shutdown()


def _read_line() -> str | None:
    """The next prompt typed at `> `, or None on an empty line or end of input."""
    try:
        line = input("> ")
    except EOFError:
        print(file=sys.stderr)
        return None
    return line if line.strip() else None


def _served_model_id(runner) -> str:
    """The model's id as /v1/models reports it: a hub id as given, a local path by its name."""
    name = runner.loaded.name
    return Path(name).name if Path(name).exists() else name


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mistralrs.server import ServerConfig, create_app, serve
    except ImportError as e:
        print(f"error: the server needs its extra dependencies ({e.name} is missing): "
              "pip install 'mistralrs-triton[server]'", file=sys.stderr)
        return 2
    runner = _runner(args)
    try:
        config = ServerConfig(
            model_name=args.served_model_name or _served_model_id(runner),
            check_model_name=args.served_model_name is not None,
            api_key=args.api_key, max_body_bytes=args.max_body_bytes,
            max_concurrent_requests=args.max_concurrent_requests,
            max_tokens_limit=args.max_tokens_limit, keep_alive_seconds=args.keep_alive_interval)
        serve(create_app(runner, config), args.host, args.port, args.shutdown_timeout,
              args.log_level)
        return 0
    finally:
        runner.shutdown()


def _milliseconds(value: str) -> float:
    from mistralrs.server.config import parse_milliseconds

    try:
        return parse_milliseconds(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of milliseconds, "
                                         f"got {value!r}") from None


def _int_at_least(minimum: int):
    """An argparse type: an integer of at least `minimum`."""
    def integer(value: str) -> int:
        number = int(value)
        if number < minimum:
            wanted = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return number
    return integer


_positive = _int_at_least(1)


def _add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    serve.add_argument("-p", "--port", type=int, default=8080)
    serve.add_argument("--api-key", default=os.environ.get("MISTRALRS_API_KEY"),
                       help="require `Authorization: Bearer KEY` on /v1 (default: "
                            "$MISTRALRS_API_KEY; none: no authentication)")
    serve.add_argument("--served-model-name", metavar="NAME",
                       help="the model id to report; requests naming another model get 404 "
                            "(default: the model's file or directory name, any name accepted)")
    serve.add_argument("--max-tokens-limit", type=_positive, metavar="N",
                       help="most tokens one request may generate, and the default")
    serve.add_argument("--max-concurrent-requests", type=_positive, default=128, metavar="N",
                       help="generation requests in flight (running or queued) before new ones "
                            "get 429 (default: 128)")
    serve.add_argument("--max-body-bytes", type=_positive, default=2 * 2**20, metavar="N",
                       help="largest request body; larger ones get 413 (default: 2 MiB)")
    serve.add_argument("--keep-alive-interval", type=_milliseconds, metavar="MS",
                       default=os.environ.get("KEEP_ALIVE_INTERVAL", "10000"),
                       help="keep-alive comment in a silent stream every MS milliseconds "
                            "(default: $KEEP_ALIVE_INTERVAL or 10000)")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on SIGINT/SIGTERM, how long requests in flight may finish before "
                            "they are cancelled (default: 30)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])


def cmd_plugins(args: argparse.Namespace) -> int:
    from mistralrs.plugins import default_registry

    plugins = default_registry().plugins()
    if not plugins:
        print("no architecture plugins installed; e.g. `pip install mistralrs-arch-llama`")
    for plugin in plugins:
        print(f"{plugin.name} {plugin.version}".rstrip())
        for arch in plugin.architectures:
            claims = ", ".join(arch.hf_architectures + arch.gguf_architectures)
            print(f"  {arch.name} ({arch.kind}): {claims}")
    return 0


def _round_ratio_range(base_runs: list, runs: list) -> str:
    """The spread of the ratio over the rounds (each round runs every concurrency once, side by
    side): on a shared machine one round can land in a slow moment of the other's."""
    if len(runs) < 2:
        return ""
    ratios = [r.decode_tok_per_sec_aggregate / b.decode_tok_per_sec_aggregate
              for b, r in zip(base_runs, runs)]
    return f" (rounds {min(ratios):.2f}-{max(ratios):.2f}x)"


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from mistralrs.bench import median_result, run_benchmark

    args.max_seqs = max(args.max_seqs, max(args.concurrency))
    runner = _runner(args)
    runs: list[list] = [[] for _ in args.concurrency]
    try:
        for _ in range(args.repeats):  # alternating, so that each sees the machine's drift
            for c, runs_of_c in zip(args.concurrency, runs):
                runs_of_c.append(run_benchmark(runner.engine, args.prompt_len, args.gen_len, c))
    finally:
        runner.shutdown()
    results = [median_result(r) for r in runs]
    print(f"model: {runner.loaded.name}  prompt {args.prompt_len} tokens, "
          f"{args.gen_len} generated" + (f", median of {args.repeats} runs" if args.repeats > 1
                                        else ""))
    print(f"{'concurrency':>11} {'prefill tok/s':>14} {'TTFT ms (p50)':>14} "
          f"{'decode tok/s/stream':>20} {'decode tok/s total':>19}")
    for r in results:
        print(f"{r.concurrency:>11} {r.prefill_tok_per_sec:>14.1f} {r.ttft_ms_p50:>14.1f} "
              f"{r.decode_tok_per_sec_per_stream:>20.2f} {r.decode_tok_per_sec_aggregate:>19.2f}")
    if len(results) > 1:
        base = results[0]
        print("decode tok/s total against concurrency " + f"{base.concurrency}: " + ", ".join(
            f"{r.decode_tok_per_sec_aggregate / base.decode_tok_per_sec_aggregate:.2f}x at "
            f"{r.concurrency}" + _round_ratio_range(runs[0], runs_of_c)
            for r, runs_of_c in zip(results[1:], runs[1:])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**r.to_dict(), "decode_tok_per_sec_aggregate_runs":
                        [run.decode_tok_per_sec_aggregate for run in runs_of_c]}
                       for r, runs_of_c in zip(results, runs)], f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mistralrs", description="LLM inference on Triton kernels")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="chat with a model in the terminal")
    _add_model_arguments(run)
    run.add_argument("-i", "--interactive-prompt", metavar="PROMPT",
                     help="answer this one prompt and exit")
    run.add_argument("--max-tokens", type=int, default=256)
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-p", type=float, default=None)
    run.add_argument("--top-k", type=int, default=None)
    run.set_defaults(func=cmd_run)

    serve = commands.add_parser("serve", help="serve the OpenAI-compatible HTTP API")
    _add_model_arguments(serve)
    _add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    bench = commands.add_parser("bench", help="measure prefill and decode throughput")
    _add_model_arguments(bench)
    bench.add_argument("--prompt-len", type=_positive, default=128, metavar="N")
    bench.add_argument("--gen-len", type=_int_at_least(2), default=128, metavar="N",
                       help="tokens generated per request (decode is timed after the first)")
    bench.add_argument("--concurrency", type=_positive, nargs="+", default=[1], metavar="N",
                       help="one or more numbers of concurrent requests")
    bench.add_argument("--repeats", type=_positive, default=1, metavar="N",
                       help="run the concurrencies N times, alternating, and report medians")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.set_defaults(func=cmd_bench)

    plugins = commands.add_parser("plugins", help="list installed architecture plugins")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MistralRsError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
