"""Speed of the native CPU quantized matmul (`PackedLinears`) at a few row counts.

    .venv/bin/python bench/cpu_matmul.py [--types Q4_1 Q8_0 ...] [--n 16384] [--rows 1 16 128]

For each weight type, one [n, k] weight (k: 576 for the legacy types, 768 for K-quants) times
activations of each row count: the best of 7 timings, as time per call, multiply-adds per second
and, at one row, the weight records read per second (a one-row matmul streams its weights from
memory, so that is the figure to hold against the machine's memory bandwidth). The weights are
the test suite's random ones (`packed_weight` in tests/kernels/test_gguf_matmul.py): gguf-py's
quantization of a random matrix for the legacy types, random blocks with modest scales for the
K-quants (speed does not depend on the values). First it prints the machine's int8
multiply-add peak for the instruction the kernels are built on (`int8_peak.c`: one copy alone,
then one copy per thread at once), to hold the many-row figures against.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from gguf import GGMLQuantizationType as Q

from mistralrs.kernels.cpu import native
from mistralrs.kernels.cpu import quant_matmul as qm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels"))
from test_gguf_matmul import packed_weight  # noqa: E402

LEGACY = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0}


def best_seconds(fn, reps: int, trials: int = 7) -> float:
    fn()
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def int8_peaks(threads: int) -> tuple[float, list[float]] | None:
    """Multiply-adds per second of one copy of int8_peak.c alone, and of each of `threads`
    copies run at once; None without a C compiler."""
    source = Path(__file__).with_name("int8_peak.c")
    with tempfile.TemporaryDirectory() as folder:
        binary = Path(folder) / "int8_peak"
        compiler = os.environ.get("CC", "cc")
        try:
            subprocess.run([compiler, "-O2", "-march=native", "-o", binary, source], check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        alone = float(subprocess.run([binary], stdout=subprocess.PIPE, text=True).stdout)
        runs = [subprocess.Popen([binary], stdout=subprocess.PIPE, text=True)
                for _ in range(threads)]
        return alone, [float(run.communicate()[0]) for run in runs]


def print_peaks(threads: int) -> None:
    """The int8 peak, and whether the CPUs reach it all at once: on the development VMs the
    host at times runs both vCPUs on one core's two hardware threads (each copy then gets
    half), and every many-row figure of that moment is low for it."""
    peaks = int8_peaks(threads)
    if peaks is None:
        return
    alone, together = peaks
    print(f"int8 multiply-add peak: {alone / 1e9:.1f} GMAC/s on one CPU; "
          f"{' + '.join(f'{p / 1e9:.1f}' for p in together)} = {sum(together) / 1e9:.1f} "
          f"on {threads} at once")
    if threads > 1 and sum(together) < 0.75 * threads * alone:
        print("  (the CPUs do not each reach the one-CPU peak at once now: they share cores' "
              "vector units, and the many-row figures below are low for it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="+", default=["Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"])
    parser.add_argument("--n", type=int, default=16384, help="output features")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    lib = native.library()
    if lib is None:
        raise SystemExit("the native CPU kernels are not available here (see the log above)")
    torch.set_num_threads(args.threads)
    print(f"kernels: {lib.mrs_matmul_isa().decode()}, {args.threads} threads")
    print_peaks(args.threads)
    for name in args.types:
        qtype = Q[name]
        k = 576 if qtype in LEGACY else 768
        linear = qm.PackedLinears([qm.repack(packed_weight(qtype, args.n, k), qtype)])
        record_bytes = linear.weights[0].data.numel()
        for m in args.rows:
            x = torch.randn(m, k)
            seconds = best_seconds(lambda: linear(x), max(3, int(2e8 / (m * args.n * k))))
            line = (f"{name:5s} {args.n}x{k} rows={m:4d}: {seconds * 1e6:9.1f} us "
                    f"{m * args.n * k / seconds / 1e9:6.1f} GMAC/s")
            if m == 1:
                line += f"  {record_bytes / seconds / 1e9:5.1f} GB/s of records"
            print(line)


if __name__ == "__main__":
    main()
