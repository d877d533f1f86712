"""Every sampling and request field of the seeds through the Python API."""
from __future__ import annotations

import pytest
import torch

from mistralrs import (
    ChatCompletionRequest,
    CompletionRequest,
    InvalidRequestError,
    Runner,
    Which,
)
from mistralrs.default_model import default_model_path
from tiny_models import save_hf_model, tiny_llama

PROMPT = [256, 72, 101, 108, 108, 111, 44, 32]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_llama(max_position_embeddings=64)
    runner = Runner(Which.Plain(model_id=str(save_hf_model(model, tmp_path_factory.mktemp("m")))),
                    progress=False)
    yield runner, model
    runner.shutdown()


@pytest.fixture(scope="module")
def smollm2():
    path = default_model_path()
    runner = Runner(Which.GGUF(quantized_model_id=str(path.parent), quantized_filename=path.name),
                    progress=False)
    yield runner
    runner.shutdown()


def complete(runner, **fields):
    return runner.send_completion_request(CompletionRequest(prompt=PROMPT, **fields))


def test_same_seed_same_text_alone_or_batched(tiny):
    runner, _ = tiny
    fields = dict(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    alone = complete(runner, **fields).choices[0].text
    handles = [runner.engine.submit(PROMPT[:3] + [i], CompletionRequest(
        PROMPT, max_tokens=16, temperature=1.0, seed=i).sampling_params()) for i in range(4)]
    batched = complete(runner, **fields).choices[0].text
    for h in handles:
        h.result()
    assert batched == alone
    assert complete(runner, **{**fields, "seed": 4321}).choices[0].text != alone


def test_n_choices_use_distinct_seeds_and_share_the_prompt(tiny):
    runner, _ = tiny
    before = runner.engine.stats()["prefill_tokens"]
    res = complete(runner, max_tokens=12, temperature=1.0, n=3, seed=7)
    assert runner.engine.stats()["prefill_tokens"] - before == len(PROMPT)  # prefilled once
    texts = [c.text for c in res.choices]
    assert [c.index for c in res.choices] == [0, 1, 2]
    assert len(set(texts)) == 3
    # choice i is the request's stream with seed + i
    single = complete(runner, max_tokens=12, temperature=1.0, seed=8).choices[0].text
    assert texts[1] == single
    if all(c.finish_reason == "length" for c in res.choices):
        assert res.usage.completion_tokens == 3 * 12


def test_logprobs_equal_log_softmax_of_reference_logits(tiny):
    runner, model = tiny
    res = runner.send_chat_completion_request(ChatCompletionRequest(
        messages="Hi", max_tokens=6, temperature=0, logprobs=True, top_logprobs=5))
    prompt_ids = runner.tokenizer.encode("Hi", add_special_tokens=True)
    content = res.choices[0].logprobs.content
    generated = runner.engine.submit(prompt_ids, CompletionRequest(
        prompt_ids, max_tokens=6, temperature=0).sampling_params()).result().choices[0].token_ids
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + generated])).logits[0]
    reference = torch.log_softmax(logits[len(prompt_ids) - 1:-1].double(), -1)
    assert len(content) == len(generated)
    for step, (entry, token) in enumerate(zip(content, generated)):
        assert abs(entry.logprob - reference[step, token].item()) < 1e-4
        assert len(entry.top_logprobs) == 5
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        top_ids = reference[step].topk(5).indices.tolist()
        assert [t.token for t in entry.top_logprobs] == top_ids
        assert entry.bytes == list(runner.tokenizer.token_bytes(token))


def test_logit_bias_forces_a_token(tiny):
    runner, _ = tiny
    res = complete(runner, max_tokens=5, temperature=0, logit_bias={65: 100.0})
    assert res.choices[0].text == runner.tokenizer.decode([65]) * 5


def test_context_length_finish_reason(tiny):
    runner, _ = tiny
    res = runner.send_completion_request(CompletionRequest(prompt=[65] * 60, temperature=0))
    assert res.choices[0].finish_reason == "length"
    assert res.usage.prompt_tokens + res.usage.completion_tokens == 64


def test_max_tokens_finish_reason_and_stop_ids(tiny):
    runner, _ = tiny
    res = complete(runner, max_tokens=7, temperature=0)
    assert res.choices[0].finish_reason == "length" and res.usage.completion_tokens == 7
    ids = runner.engine.submit(PROMPT, CompletionRequest(
        PROMPT, max_tokens=7, temperature=0).sampling_params()).result().choices[0].token_ids
    stop_id = ids[3]
    stopped = complete(runner, max_tokens=7, temperature=0, stop=stop_id)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == ids.index(stop_id) + 1
    stopped = complete(runner, max_tokens=7, temperature=0, stop_seqs=[999 % 256, stop_id])
    assert stopped.choices[0].finish_reason == "stop"


def test_stop_string_split_across_tokens(smollm2):
    prompt_ids = smollm2.tokenizer.encode("The capital of France is")
    params = CompletionRequest(prompt_ids, max_tokens=12, temperature=0).sampling_params()
    ids = smollm2.engine.submit(prompt_ids, params).result().choices[0].token_ids
    pieces = [smollm2.tokenizer.decode(ids[:i]) for i in range(len(ids) + 1)]
    plain = pieces[-1]
    # A stop string made of the end of one multi-character token and the start of the next.
    i = next(i for i in range(3, len(ids)) if len(pieces[i]) - len(pieces[i - 1]) >= 3
             and len(pieces[i + 1]) - len(pieces[i]) >= 3)
    stop = plain[len(pieces[i]) - 2:len(pieces[i]) + 2]
    res = smollm2.send_completion_request(CompletionRequest(
        prompt="The capital of France is", max_tokens=12, temperature=0, stop=["never", stop]))
    assert res.choices[0].finish_reason == "stop"
    assert res.choices[0].text == plain[:plain.index(stop)]


def test_streamed_text_equals_non_streamed(tiny):
    runner, _ = tiny
    plain = runner.send_chat_completion_request(ChatCompletionRequest(
        messages=[{"role": "user", "content": "Hi"}], max_tokens=24, temperature=0.8,
        seed=11)).choices[0].message.content
    stop = next(plain[k:k + 2] for k in range(4, len(plain) - 1)
                if "\ufffd" not in plain[k:k + 2])
    fields = dict(max_tokens=24, temperature=0.8, seed=11, stop=stop)
    messages = [{"role": "user", "content": "Hi"}]
    whole = runner.send_chat_completion_request(ChatCompletionRequest(messages, **fields)).choices[0]
    assert whole.finish_reason == "stop"
    chunks = list(runner.send_chat_completion_request(
        ChatCompletionRequest(messages, stream=True, **fields)))
    text = "".join(c.delta.content for chunk in chunks for c in chunk.choices)
    assert text == whole.message.content
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert finishes == [whole.finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    whole_completion = complete(runner, **fields).choices[0].text
    streamed = complete(runner, stream=True, **fields)
    assert "".join(c.text for chunk in streamed for c in chunk.choices) == whole_completion


def test_closing_a_stream_early_frees_its_blocks(tiny):
    runner, _ = tiny
    stream = complete(runner, max_tokens=40, temperature=0, stream=True)
    next(stream)
    stream.close()
    import time

    deadline = time.time() + 10
    while runner.engine.stats()["running"] and time.time() < deadline:
        time.sleep(0.05)
    stats = runner.engine.stats()
    assert stats["running"] == 0 and stats["free_blocks"] == stats["total_blocks"]


@pytest.mark.parametrize("fields, message", [
    (dict(max_tokens=-1), "max_tokens"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-5), "top_k"),
    (dict(n=0), "n "),
    (dict(logit_bias={99999: 1.0}), "outside the vocabulary"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_logprobs=50, logprobs=True), "top_logprobs"),
    (dict(stop=[1.5]), "stop"),
])
def test_validation_errors(tiny, fields, message):
    runner, _ = tiny
    with pytest.raises(InvalidRequestError, match=message):
        complete(runner, **fields)


def test_prompt_longer_than_the_context(tiny):
    runner, _ = tiny
    with pytest.raises(InvalidRequestError, match="context"):
        runner.send_completion_request(CompletionRequest(prompt=[65] * 100))


def test_requests_after_shutdown_fail_clearly(tmp_path):
    from mistralrs import MistralRsError
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    runner = Runner(Which.Plain(model_id=str(save_hf_model(LlamaForCausalLM(config), tmp_path))),
                    progress=False)
    runner.shutdown()
    with pytest.raises(MistralRsError, match="shut down"):
        complete(runner, max_tokens=2)


def test_nan_logits_fail_only_the_request_concerned(tiny):
    """A model producing NaN for one request: that request fails clearly, the others go on."""
    from mistralrs import MistralRsError

    runner, _ = tiny
    model = runner.loaded.model
    original = model.forward

    def poisoned(batch):
        logits = original(batch)
        rows = (batch.input_ids[batch.logits_indices] == 66).nonzero().flatten()  # token "b"-ish
        logits[rows] = float("nan")
        return logits

    model.forward = poisoned
    try:
        bad = runner.engine.submit([256, 66], CompletionRequest([0], max_tokens=4,
                                                                temperature=0).sampling_params())
        good = runner.engine.submit([256, 67], CompletionRequest([0], max_tokens=4,
                                                                 temperature=0).sampling_params())
        with pytest.raises(MistralRsError, match="NaN"):
            bad.result()
        assert good.result().choices[0].finish_reason in ("length", "stop")
    finally:
        model.forward = original
