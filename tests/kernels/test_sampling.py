"""Sampling kernels: Triton against the torch reference, and both against independent oracles.

Oracles: transformers' own logits processors (temperature, top-k, top-p, min-p, repetition
penalty), the OpenAI presence/frequency formula and the hash written with Python integers, and
chi-square tests of the drawn tokens against the distributions transformers defines. Every test
runs from fixed seeds, so none can flake.
"""
from __future__ import annotations

import collections
import dataclasses
import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mistralrs.kernels.sampling import (
    SamplingTensors,
    apply_penalties,
    compute_logprobs,
    sample,
    uniform_for_rows,
)
from mistralrs.kernels import sampling_triton
from mistralrs.kernels.sampling_reference import apply_penalties_reference, sample_reference

# Triton runs compiled on a GPU, interpreted on CPU elsewhere (tests/conftest.py).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Upper-tail standard normal quantile of the chi-square tests' significance, 1e-4.
Z_SIGNIFICANCE_1E_4 = 3.719


def sample_triton(logits: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    """The Triton kernel on its device, with CPU tensors in and out like the reference."""
    return sampling_triton.sample_triton(logits.to(TRITON_DEVICE), tensors.to(TRITON_DEVICE)).cpu()


def apply_penalties_triton(logits: torch.Tensor, tensors: SamplingTensors, output_tokens: torch.Tensor,
                           window_tokens: torch.Tensor) -> torch.Tensor:
    return sampling_triton.apply_penalties_triton(
        logits.to(TRITON_DEVICE), tensors.to(TRITON_DEVICE), output_tokens.to(TRITON_DEVICE),
        window_tokens.to(TRITON_DEVICE)).cpu()


def _rows(tensors: SamplingTensors, index) -> SamplingTensors:
    """The same parameters for a subset of the rows."""
    fields = dataclasses.fields(tensors)
    return SamplingTensors(**{field.name: getattr(tensors, field.name)[index] for field in fields})


def _padded(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# The random stream


def _uniform_with_python_ints(seed: int, step: int) -> float:
    """The specification of `uniform_for_rows`, in unbounded Python integers."""
    mask = 0xFFFFFFFF

    def mix(x):
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & mask
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & mask
        return x ^ (x >> 16)

    state = 0
    for word in (seed & mask, (seed >> 32) & mask, step & mask, (step >> 32) & mask):
        state = mix(((state ^ word) + 0x9E3779B9) & mask)
    return (state >> 8) / 2**24


def test_uniform_matches_its_integer_specification():
    seeds = [0, 1, 42, -1, -(2**63), 2**63 - 1, 0x1234_5678_9ABC_DEF0, -987654321]
    steps = [0, 1, 7, 2**32 - 1, 2**32, 2**40 + 3, 123456789, 2**62]
    got = uniform_for_rows(torch.tensor(seeds), torch.tensor(steps))
    expected = [_uniform_with_python_ints(seed, step) for seed, step in zip(seeds, steps)]
    assert got.dtype == torch.float32
    assert got.tolist() == expected
    assert all(0.0 <= u < 1.0 for u in expected)


def test_seeds_wrap_modulo_2_64():
    wrapped = SamplingTensors.from_rows([1.0, 1.0], seed=[2**64 - 1, 2**64 + 5])
    assert wrapped.seed.tolist() == [-1, 5]


# ---------------------------------------------------------------------------------------------
# Chi-square machinery (no scipy)


def _chi_square_critical(degrees_of_freedom: int) -> float:
    """Wilson-Hilferty's approximation of the 1e-4 upper quantile (a few % high for small df)."""
    h = 2.0 / (9.0 * degrees_of_freedom)
    return degrees_of_freedom * (1.0 - h + Z_SIGNIFICANCE_1E_4 * math.sqrt(h)) ** 3


def _assert_follows(draws: torch.Tensor, probs: torch.Tensor) -> None:
    """Draws never leave the support of `probs` and pass a chi-square test against it.

    Tokens expected fewer than 5 times are pooled into one bin, as the test requires.
    """
    support = probs > 0
    assert bool(support[draws].all()), "a filtered-out token was drawn"
    observed = torch.bincount(draws, minlength=probs.numel()).double()
    expected = probs.double() * draws.numel()
    large = expected >= 5
    observed_bins = torch.cat([observed[large], observed[support & ~large].sum()[None]])
    expected_bins = torch.cat([expected[large], expected[support & ~large].sum()[None]])
    if expected_bins[-1] < 5:  # too little pooled mass to stand alone: fold it into the others
        observed_bins, expected_bins = observed_bins[:-1], expected_bins[:-1]
        expected_bins *= observed_bins.sum() / expected_bins.sum()
    assert expected_bins.numel() >= 2
    statistic = float(((observed_bins - expected_bins) ** 2 / expected_bins).sum())
    assert statistic < _chi_square_critical(expected_bins.numel() - 1), statistic


def _transformers_distribution(logits: torch.Tensor, temperature: float, top_k: int = 0,
                               top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """softmax(logits / T) restricted to the tokens that every enabled warper keeps.

    Each warper is applied alone to the temperature-scaled logits, and their kept sets are
    intersected, since our filters all judge the same distribution (transformers chains them,
    renormalising in between).
    """
    no_ids = torch.zeros(1, 0, dtype=torch.long)
    scaled = TemperatureLogitsWarper(temperature)(no_ids, logits[None].clone())
    warpers = [TopKLogitsWarper(top_k) if top_k > 0 else None,
               TopPLogitsWarper(top_p) if top_p < 1.0 else None,
               MinPLogitsWarper(min_p) if min_p > 0 else None]
    kept = torch.ones_like(scaled, dtype=torch.bool)
    for warper in filter(None, warpers):
        kept &= torch.isfinite(warper(no_ids, scaled.clone()))
    return torch.softmax(scaled.masked_fill(~kept, float("-inf")), dim=-1)[0]


# ---------------------------------------------------------------------------------------------
# Sampling statistics


@pytest.fixture(scope="module")
def peaked_logits() -> torch.Tensor:
    return torch.randn(50, generator=torch.Generator().manual_seed(1234)) * 2.0


FILTERS = {
    "temperature": dict(temperature=0.8),
    "top_k": dict(temperature=1.0, top_k=6),
    "top_p": dict(temperature=1.0, top_p=0.7),
    "min_p": dict(temperature=1.2, min_p=0.1),
    "all": dict(temperature=1.3, top_k=30, top_p=0.8, min_p=0.05),  # top-p binds: 20 tokens
}


def _draws(logits: torch.Tensor, count: int, sampler, temperature: float, top_k: int = 0,
           top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """`count` successive draws of one request (seed 2024, steps 0, 1, ...), as one batch."""
    tensors = SamplingTensors.from_rows([temperature] * count, top_k=[top_k] * count,
                                        top_p=[top_p] * count, min_p=[min_p] * count,
                                        seed=[2024] * count, step=range(count))
    return sampler(logits.expand(count, -1).contiguous(), tensors)


@pytest.mark.parametrize("name", FILTERS)
def test_reference_draws_follow_transformers_distribution(peaked_logits, name):
    draws = _draws(peaked_logits, 20000, sample_reference, **FILTERS[name])
    _assert_follows(draws, _transformers_distribution(peaked_logits, **FILTERS[name]))


def test_triton_draws_follow_transformers_distribution(peaked_logits):
    # Rows without top-k/top-p skip the bisection, the slow part under the interpreter.
    draws = _draws(peaked_logits, 300, sample_triton, **FILTERS["min_p"])
    _assert_follows(draws, _transformers_distribution(peaked_logits, **FILTERS["min_p"]))


def _three_close_leaders() -> torch.Tensor:
    """16 logits: tokens 3, 7, 11 with probs .330, .324, .317 (weights 1, .980, .961), the rest ~.002."""
    logits = torch.full((16,), -3.0)
    logits[[3, 7, 11]] = torch.tensor([2.0, 1.98, 1.96])
    return logits


def _tied_leaders() -> torch.Tensor:
    logits = torch.zeros(16)
    logits[[2, 9]] = 5.0
    return logits


KEPT_SETS = {
    "top_k": (_three_close_leaders, dict(top_k=2), {3, 7}),
    "top_p": (_three_close_leaders, dict(top_p=0.5), {3, 7}),
    "min_p": (_three_close_leaders, dict(min_p=0.97), {3, 7}),
    "top_k ties": (_tied_leaders, dict(top_k=1), {2, 9}),
    "top_p zero": (_tied_leaders, dict(top_p=0.0), {2, 9}),
}


@pytest.mark.parametrize("sampler", [sample_reference, sample_triton])
@pytest.mark.parametrize("name", KEPT_SETS)
def test_filters_keep_exactly_their_sets(sampler, name):
    make_logits, filters, kept = KEPT_SETS[name]
    draws = _draws(make_logits(), 12, sampler, temperature=1.0, **filters)
    assert set(draws.tolist()) == kept


def test_greedy_takes_the_first_maximum():
    logits = torch.zeros(2, 5000)
    logits[0, [4100, 10]] = 7.0  # a tie across tiles of the Triton kernel
    logits[1, 4999] = 1.0
    tensors = SamplingTensors.from_rows([0.0, 0.0], seed=[3, 4])
    for sampler in (sample_reference, sample_triton):
        assert sampler(logits, tensors).tolist() == [10, 4999]


# ---------------------------------------------------------------------------------------------
# Triton against the reference


def _mixed_rows(rows: int, vocab: int, generator: torch.Generator):
    logits = torch.randn(rows, vocab, generator=generator) * 3.0
    logits[2, :: 7] = float("-inf")  # masked tokens, as a grammar or a -inf bias leaves them
    tensors = SamplingTensors.from_rows(
        temperature=[0.0, 0.7, 1.0, 1.3, 0.9, 1.0, 0.5, 1.1][:rows],
        top_k=[0, 20, 0, 0, 50, 5, 0, 3000][:rows],
        top_p=[1.0, 1.0, 0.8, 1.0, 0.9, 0.5, 1.0, 0.95][:rows],
        min_p=[0.0, 0.0, 0.0, 0.1, 0.05, 0.0, 0.0, 0.02][:rows],
        presence_penalty=[0.0, 0.5, 0.0, 1.0, 0.0, 0.0, -0.5, 0.3][:rows],
        frequency_penalty=[0.0, 0.2, 0.3, 0.0, 0.0, 0.0, 0.1, 0.0][:rows],
        repetition_penalty=[1.0, 1.3, 1.0, 0.8, 1.1, 1.0, 1.5, 1.2][:rows],
        seed=[11, 12, 13, 14, 15, 16, 17, 18][:rows],
        step=[0, 5, 9, 2, 100, 7, 3, 1][:rows],
        logit_bias=[None, {3: 5.0, 7: -2.0}, None, {vocab - 1: 1.5}, None, {0: 30.0}, None, None][:rows],
    )
    output_tokens = torch.randint(-1, vocab, (rows, 40), generator=generator)
    output_tokens[:, :10] = output_tokens[:, 10:20]  # repeated tokens
    window_tokens = torch.randint(-1, vocab, (rows, 16), generator=generator)
    window_tokens[:, 0] = window_tokens[:, 1]
    return logits, tensors, output_tokens, window_tokens


def test_penalties_triton_matches_reference():
    generator = torch.Generator().manual_seed(5)
    logits, tensors, output_tokens, window_tokens = _mixed_rows(8, 3000, generator)
    expected = apply_penalties_reference(logits, tensors, output_tokens, window_tokens)
    got = apply_penalties_triton(logits, tensors, output_tokens, window_tokens)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.equal(expected, logits)


def test_sample_triton_matches_reference():
    generator = torch.Generator().manual_seed(6)
    logits, tensors, output_tokens, window_tokens = _mixed_rows(8, 5000, generator)
    logits = apply_penalties_reference(logits, tensors, output_tokens, window_tokens)
    for step in range(2):
        stepped = dataclasses.replace(tensors, step=tensors.step + 31 * step)
        assert sample_triton(logits, stepped).tolist() == sample_reference(logits, stepped).tolist()


def test_a_row_draws_the_same_alone_or_in_any_batch():
    logits, tensors, _, _ = _mixed_rows(6, 1000, torch.Generator().manual_seed(7))
    for sampler in (sample_reference, sample_triton):
        batch = sampler(logits, tensors)
        alone = [int(sampler(logits[i:i + 1], _rows(tensors, slice(i, i + 1)))[0]) for i in range(6)]
        reordered = sampler(logits.flip(0), _rows(tensors, torch.arange(5, -1, -1))).flip(0)
        assert batch.tolist() == alone == reordered.tolist()


def test_seeds_give_reproducible_and_distinct_streams():
    logits = torch.zeros(1, 1000)  # uniform: every draw is the random number itself

    def stream(seed):
        tensors = SamplingTensors.from_rows([1.0] * 64, seed=[seed] * 64, step=range(64))
        return sample(logits.expand(64, -1), tensors).tolist()

    assert stream(1) == stream(1)
    assert stream(1) != stream(2)
    assert stream(2) != stream(-2)


# ---------------------------------------------------------------------------------------------
# Penalties against their definitions


@pytest.mark.parametrize("implementation", [apply_penalties_reference, apply_penalties_triton])
def test_repetition_penalty_matches_transformers(implementation):
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 200, generator=generator) * 4.0
    windows = [[5, 9, 9, 150, 5, 0], [199, 3], [7, 7, 7, 8, 100, 101, 102]]
    penalties = [1.3, 0.7, 2.0]
    tensors = SamplingTensors.from_rows([1.0] * 3, repetition_penalty=penalties)
    got = implementation(logits, tensors, torch.full((3, 0), -1), _padded(windows))
    for row, (window, penalty) in enumerate(zip(windows, penalties)):
        processor = RepetitionPenaltyLogitsProcessor(penalty)
        expected = processor(torch.tensor([window]), logits[row:row + 1].clone())
        torch.testing.assert_close(got[row], expected[0], rtol=0, atol=0)


@pytest.mark.parametrize("implementation", [apply_penalties_reference, apply_penalties_triton])
def test_presence_frequency_and_bias_match_openai_formula(implementation):
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(3, 100, generator=generator)
    outputs = [[1, 1, 1, 4, 99, 4], [], [50]]
    presence, frequency = [0.5, 1.0, -0.4], [0.25, 2.0, 0.6]
    bias = [{1: 2.0, 60: -100.0}, None, {50: 0.75, 0: 1.0}]
    tensors = SamplingTensors.from_rows([1.0] * 3, presence_penalty=presence,
                                        frequency_penalty=frequency, logit_bias=bias)
    no_window = torch.full((3, 1), -1)
    got = implementation(logits, tensors, _padded([row or [-1] for row in outputs]), no_window)

    expected = logits.clone()
    for row, tokens in enumerate(outputs):
        for token, count in collections.Counter(tokens).items():
            expected[row, token] -= count * frequency[row] + presence[row]
        for token, value in (bias[row] or {}).items():
            expected[row, token] += value
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_dispatch_uses_the_reference_on_cpu():
    generator = torch.Generator().manual_seed(10)
    logits, tensors, output_tokens, window_tokens = _mixed_rows(4, 300, generator)
    penalized = apply_penalties(logits, tensors, output_tokens, window_tokens)
    expected = apply_penalties_reference(logits, tensors, output_tokens, window_tokens)
    assert torch.equal(penalized, expected)
    assert torch.equal(sample(penalized, tensors), sample_reference(penalized, tensors))


# ---------------------------------------------------------------------------------------------
# Logprobs and parameters


def test_compute_logprobs_matches_log_softmax():
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 300, generator=generator) * 5.0
    chosen = torch.tensor([0, 17, 299, 150])
    chosen_logprob, top_ids, top_logprobs = compute_logprobs(logits, chosen, top_n=5)

    wide = logits.double()
    log_normalizer = wide.max(-1, keepdim=True).values + torch.log(
        torch.exp(wide - wide.max(-1, keepdim=True).values).sum(-1, keepdim=True))
    expected = (wide - log_normalizer).float()
    torch.testing.assert_close(chosen_logprob, expected.gather(1, chosen[:, None])[:, 0])
    torch.testing.assert_close(top_logprobs, expected.gather(1, top_ids))
    assert bool((top_logprobs[:, :-1] >= top_logprobs[:, 1:]).all())
    torch.testing.assert_close(top_logprobs, expected.sort(-1, descending=True).values[:, :5])
    assert top_ids.shape == (4, 5) and top_ids.dtype == torch.int64


def test_from_rows_pads_logit_bias_and_rejects_bad_rows():
    tensors = SamplingTensors.from_rows([0.5, 1.0], logit_bias=[{4: 1.0, 9: -1.0}, None])
    assert tensors.bias_ids.tolist() == [[4, 9], [-1, -1]]
    assert tensors.bias_values.tolist() == [[1.0, -1.0], [0.0, 0.0]]
    assert SamplingTensors.from_rows([1.0]).bias_ids.shape == (1, 0)
    with pytest.raises(ValueError, match="expected 2"):
        SamplingTensors.from_rows([0.5, 1.0], top_k=[3])
    with pytest.raises(ValueError, match="top_p"):
        SamplingTensors.from_rows([1.0], top_p=[1.5])
    with pytest.raises(ValueError, match="temperature"):
        SamplingTensors.from_rows([-1.0])
