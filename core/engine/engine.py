"""The engine: a background thread that runs scheduler -> model runner -> sampler steps and
streams each request's tokens back to whoever submitted it."""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import torch

from mistralrs.engine.model_runner import ModelRunner, kv_bytes_per_block
from mistralrs.engine.params import SamplingParams
from mistralrs.engine.sampler import TokenLogprobs, sample_next, scan_rows
from mistralrs.engine.stop import StopStringMatcher
from mistralrs.errors import InvalidRequestError, MistralRsError
from mistralrs.loading.detokenizer import IncrementalDetokenizer
from mistralrs.loading.model_loader import LoadedModel
from mistralrs.scheduler import BlockManager, Scheduler, Sequence

log = logging.getLogger(__name__)


@dataclass
class Delta:
    """New output of one choice: text released this step, the token that produced it, and the
    finish reason (`stop` or `length`) on the last delta of the choice."""

    choice: int
    text: str
    token_id: int | None
    logprobs: TokenLogprobs | None = None
    finish_reason: str | None = None


@dataclass
class ChoiceOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, TokenLogprobs]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    choices: list[ChoiceOutput]
    prompt_tokens: int
    completion_tokens: int
    submitted: float
    first_token: float
    finished: float


_DONE = object()


class RequestHandle:
    """What `Engine.submit` returns: iterate it for `Delta`s as they are produced, or call
    `result()` to wait for the whole output. `cancel()` (or closing the iterator early) stops
    generation and frees the request's cache blocks."""

    def __init__(self, engine: "Engine", prompt_tokens: int, n: int):
        self._engine = engine
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self.prompt_tokens = prompt_tokens
        self.n = n
        self.submitted = time.perf_counter()
        self.first_token: float | None = None
        self.finished: float | None = None
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._engine._inbox.put(("cancel", self))

    def __iter__(self):
        try:
            while True:
                item = self._events.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self.finished is None:
                self.cancel()

    def result(self) -> RequestOutput:
        choices = [ChoiceOutput(i) for i in range(self.n)]
        for delta in self:
            choice = choices[delta.choice]
            choice.text += delta.text
            if delta.token_id is not None:
                choice.token_ids.append(delta.token_id)
                if delta.logprobs is not None:
                    choice.logprobs.append((delta.token_id, delta.logprobs))
            if delta.finish_reason:
                choice.finish_reason = delta.finish_reason
        completion = sum(len(c.token_ids) for c in choices)
        return RequestOutput(choices, self.prompt_tokens, completion, self.submitted,
                             self.first_token or self.finished, self.finished)


class _Choice:
    """Engine-side state of one choice: its sequence, detokenizer and stop-string matcher."""

    def __init__(self, handle: RequestHandle, index: int, seq: Sequence | None,
                 params: SamplingParams, seed: int, detokenizer: IncrementalDetokenizer):
        self.handle, self.index, self.seq, self.params, self.seed = handle, index, seq, params, seed
        self.detokenizer = detokenizer
        self.stops = StopStringMatcher(params.stop_strings)
        self.pending_forks: list[_Choice] = []


class Engine:
    """Continuous-batching generation over one loaded model, in a background thread.

    `submit` is thread-safe. The KV cache gets `kv_cache_bytes` (default: 1 GiB on CPU, half of
    the free GPU memory on CUDA), split into blocks of `block_size` tokens; full blocks are
    reused across requests that share a prefix unless `enable_prefix_caching` is off.
    `kv_cache_dtype` is "auto" or "int8" (an 8-bit cache on the CPU: `mistralrs.kernels.kv_u8`)."""

    def __init__(self, loaded: LoadedModel, max_seqs: int = 16, kv_cache_bytes: int | None = None,
                 block_size: int = 32, max_batched_tokens: int = 2048,
                 enable_prefix_caching: bool = True, kv_cache_dtype: str = "auto"):
        self.loaded = loaded
        per_block = kv_bytes_per_block(loaded.model, block_size, loaded.dtype, loaded.device,
                                       kv_cache_dtype)
        if kv_cache_bytes is None:
            kv_cache_bytes = (torch.cuda.mem_get_info()[0] // 2 if loaded.device.type == "cuda"
                              else 1 << 30)
        num_blocks = max(1, kv_cache_bytes // per_block)
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_seqs, max_batched_tokens)
        self.max_context = min(loaded.max_context, num_blocks * block_size)
        self.runner = ModelRunner(loaded.model, num_blocks, block_size, loaded.dtype, loaded.device,
                                  self.max_context, kv_cache_dtype)
        self.vocab_size = loaded.config.vocab_size
        self.num_prefill_tokens = 0
        self._inbox: queue.Queue = queue.Queue()
        self._choices: dict[int, _Choice] = {}
        self._num_threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._loop, name="mistralrs-engine", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        return self.submit_many([prompt_ids], params)[0]

    def submit_many(self, prompts: list[list[int]], params: SamplingParams) -> list[RequestHandle]:
        """Submit several prompts at once: they reach the scheduler together, so that it admits
        them in the same step as far as its token budget allows (one client's batch, or the
        bench's concurrent streams). None is submitted if one is invalid."""
        if not self._thread.is_alive():
            raise MistralRsError("the engine has been shut down; create a new Runner")
        params.validate(self.vocab_size)
        for prompt_ids in prompts:
            self._validate_prompt(prompt_ids)
        handles = [RequestHandle(self, len(prompt_ids), params.n) for prompt_ids in prompts]
        if params.max_tokens == 0:
            for handle in handles:
                handle.finished = handle.first_token = handle.submitted
                for i in range(params.n):
                    handle._events.put(Delta(i, "", None, finish_reason="length"))
                handle._events.put(_DONE)
            return handles
        self._inbox.put(("submit", [(handle, list(prompt_ids), params)
                                    for handle, prompt_ids in zip(handles, prompts)]))
        return handles

    def _validate_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        if not all(0 <= t < self.vocab_size for t in prompt_ids):
            raise InvalidRequestError(f"the prompt has token ids outside the vocabulary "
                                      f"(0..{self.vocab_size - 1})")
        if len(prompt_ids) >= self.max_context:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_ids)} tokens, but the context holds at most "
                f"{self.max_context}; shorten the prompt")

    def shutdown(self) -> None:
        self._inbox.put(("stop", None))
        self._thread.join(timeout=30)

    def stats(self) -> dict[str, int]:
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "free_blocks": self.block_manager.num_free_blocks,
            "total_blocks": self.block_manager.num_blocks,
            "preemptions": self.scheduler.num_preemptions,
            "prefill_tokens": self.num_prefill_tokens,
            "reused_prefix_tokens": self.scheduler.num_reused_tokens,
        }

    # -- the engine thread -------------------------------------------------------------------
    def _loop(self) -> None:
        # A new thread starts from OpenMP's default thread count, not its creator's setting.
        torch.set_num_threads(self._num_threads)
        while True:
            try:
                message = self._inbox.get(block=not self.scheduler.has_work())
            except queue.Empty:
                message = None
            while message is not None:
                kind, payload = message
                if kind == "stop":
                    self._fail_all(MistralRsError("the engine was shut down"))
                    return
                self._handle(kind, payload)
                try:
                    message = self._inbox.get_nowait()
                except queue.Empty:
                    message = None
            if self.scheduler.has_work():
                try:
                    self._step()
                except Exception as e:  # a failing step must not kill the engine thread
                    log.exception("engine step failed")
                    self._fail_all(e)

    def _handle(self, kind: str, payload) -> None:
        if kind == "submit":
            for handle, prompt_ids, params in payload:
                self._admit(handle, prompt_ids, params)
        elif kind == "cancel":
            for choice in [c for c in self._choices.values() if c.handle is payload]:
                self._retire(choice)
            payload.finished = payload.finished or time.perf_counter()
            payload._events.put(_DONE)

    def _admit(self, handle: RequestHandle, prompt_ids: list[int], params: SamplingParams) -> None:
        base_seed = params.seed if params.seed is not None else random.getrandbits(63)
        choices = [_Choice(handle, i, None, params, base_seed + i,
                           IncrementalDetokenizer(self.loaded.tokenizer, prompt_ids=prompt_ids))
                   for i in range(params.n)]
        # Choice 0's sequence prefills the prompt; the others fork from it once it is done,
        # sharing its cache blocks.
        first = choices[0]
        first.seq = Sequence(prompt_ids, owner=first)
        first.pending_forks = choices[1:]
        self._choices[first.seq.seq_id] = first
        self.scheduler.add(first.seq)

    def _step(self) -> None:
        scheduled = self.scheduler.schedule()
        if not scheduled:
            # Nothing fits although nothing runs: the cache is too small for the head request.
            self._finish_choice(self.scheduler.waiting[0].owner, "length")
            return
        self.runner.copy_blocks(self.scheduler.block_copies)
        logits = self.runner.run(scheduled)
        self.scheduler.advance(scheduled)
        self.num_prefill_tokens += sum(
            max(0, min(i.seq.num_computed, i.seq.num_prompt_tokens)
                - (i.seq.num_computed - i.num_new_tokens)) for i in scheduled)
        rows, choices = [], []
        for row, item in enumerate(i for i in scheduled if i.completes_input):
            choice = item.seq.owner
            rows.append(row)
            choices.append(choice)
            for sibling in choice.pending_forks:
                sibling.seq = Sequence(choice.seq.token_ids[:choice.seq.num_prompt_tokens],
                                       owner=sibling)
                self.scheduler.add_fork(choice.seq, sibling.seq)
                self._choices[sibling.seq.seq_id] = sibling
                rows.append(row)
                choices.append(sibling)
            choice.pending_forks = []
        if rows != list(range(logits.shape[0])):
            logits = logits[rows]
        argmax, broken = scan_rows(logits)
        if any(broken):
            # A model that produces NaN (overflow in half precision, a bad checkpoint) fails the
            # requests concerned, not the whole batch.
            for choice in {id(c.handle): c for c, bad in zip(choices, broken) if bad}.values():
                self._fail(choice.handle, MistralRsError(
                    "the model produced NaN logits for this request (try dtype F32 or BF16)"))
            keep = [i for i, bad in enumerate(broken) if not bad and choices[i].seq.seq_id
                    in self._choices]
            logits, choices = logits[keep], [choices[i] for i in keep]
            argmax = None if argmax is None else [argmax[i] for i in keep]
            if not choices:
                return
        tokens, logprobs = sample_next(logits, [c.seq for c in choices],
                                       [c.params for c in choices], [c.seed for c in choices],
                                       argmax)
        for choice, token, lp in zip(choices, tokens, logprobs):
            self._on_token(choice, token, lp)

    def _on_token(self, choice: _Choice, token: int, logprobs: TokenLogprobs | None) -> None:
        seq, params, handle = choice.seq, choice.params, choice.handle
        if handle.first_token is None:
            handle.first_token = time.perf_counter()
        seq.append(token)
        reason = None
        if ((token in self.loaded.eos_token_ids and not params.ignore_eos)
                or token in params.stop_token_ids):
            text, reason = choice.stops.flush(), "stop"
        else:
            text, hit = choice.stops.add(choice.detokenizer.push(token))
            if hit:
                reason = "stop"
            elif ((params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens)
                  or len(seq) >= self.max_context):
                reason = "length"
                text += choice.stops.add(choice.detokenizer.flush())[0] + choice.stops.flush()
        handle._events.put(Delta(choice.index, text, token, logprobs, reason))
        if reason:
            self._retire(choice)
            self._maybe_close(handle)

    def _finish_choice(self, choice: _Choice, reason: str) -> None:
        for c in [choice, *choice.pending_forks]:
            c.handle._events.put(Delta(c.index, c.stops.flush(), None, finish_reason=reason))
        self._retire(choice)
        self._maybe_close(choice.handle)

    def _retire(self, choice: _Choice) -> None:
        self._choices.pop(choice.seq.seq_id, None)
        self.scheduler.finish(choice.seq)

    def _maybe_close(self, handle: RequestHandle) -> None:
        if not any(c.handle is handle for c in self._choices.values()):
            handle.finished = time.perf_counter()
            handle._events.put(_DONE)

    def _fail(self, handle: RequestHandle, error: BaseException) -> None:
        for choice in [c for c in self._choices.values() if c.handle is handle]:
            self._retire(choice)
        handle.finished = time.perf_counter()
        handle._events.put(error)

    def _fail_all(self, error: BaseException) -> None:
        for handle in {id(c.handle): c.handle for c in self._choices.values()}.values():
            self._fail(handle, error)
