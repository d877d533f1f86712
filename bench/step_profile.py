"""Where a replayed decode step's time goes: per native kernel, and the rest (Python: scheduling,
sampling, detokenizing), for the `mistralrs bench` runs at 1 and at N streams.

    .venv/bin/python bench/step_profile.py [--streams 16] [mistralrs bench options...]

Each kernel call of a replayed step is timed on its own (two clock reads a call, ~0.2 us); a
step's "rest" is its wall time less its kernels' time. Only replayed steps (pure decode, all
streams running) are counted.
"""
from __future__ import annotations

import argparse
import collections
import time

from mistralrs import cli
from mistralrs.bench import run_benchmark
from mistralrs.engine import engine as engine_module
from mistralrs.kernels.cpu import native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    ours, bench_args = parser.parse_known_args()
    kernel_seconds: collections.Counter = collections.Counter()
    steps: list[tuple[int, float, float]] = []  # (sequences running, wall, kernels)

    def timed_replay(recording) -> None:
        for fn, args in recording.calls:
            start = time.perf_counter()
            fn(*args)
            kernel_seconds[fn.__name__] += time.perf_counter() - start

    step = engine_module.Engine._step

    def timed_step(engine) -> None:
        before, start = sum(kernel_seconds.values()), time.perf_counter()
        step(engine)
        steps.append((len(engine.scheduler.running), time.perf_counter() - start,
                      sum(kernel_seconds.values()) - before))

    native.Recording.replay = timed_replay
    engine_module.Engine._step = timed_step
    args = cli.build_parser().parse_args(["bench", *bench_args])
    args.max_seqs = max(args.max_seqs, ours.streams)
    runner = cli._runner(args)
    try:
        for streams in (1, ours.streams):
            kernel_seconds.clear()
            steps.clear()
            result = run_benchmark(runner.engine, args.prompt_len, args.gen_len, streams)
            replayed = [s for s in steps if s[0] == streams and s[2] > 0]
            wall = sum(s[1] for s in replayed) / len(replayed)
            kernels = sum(s[2] for s in replayed) / len(replayed)
            print(f"{streams} stream(s): {result.decode_tok_per_sec_aggregate:.1f} tok/s; "
                  f"{len(replayed)} replayed steps of {wall * 1e3:.2f} ms: kernels "
                  f"{kernels * 1e3:.2f} ms, the rest {(wall - kernels) * 1e3:.2f} ms")
            for name, seconds in kernel_seconds.most_common(8):
                print(f"    {name:32s} {seconds / len(replayed) * 1e3:6.2f} ms")
    finally:
        runner.shutdown()


if __name__ == "__main__":
    main()
