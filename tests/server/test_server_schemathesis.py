"""schemathesis against the server's own /openapi.json: generated requests, valid and invalid,
get no 5xx, only documented statuses and content types, and bodies valid against the schema.
In-process (ASGI) over the tiny random model, with small generation limits, to stay fast."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from server_harness import tiny_app, wait_until_idle

API_KEY = "sk-test"
EXAMPLES = 100
"""Per operation and generation mode: about 500 requests in all."""


@pytest.fixture(scope="module")
def api_schema(tiny_runner):
    app = tiny_app(tiny_runner, api_key=API_KEY, max_tokens_limit=4,
                   max_body_bytes=64 * 1024)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def operations(api_schema):
    return [result.ok() for result in api_schema.get_all_operations()]


# Not checked: that every schema-valid request is accepted. Some limits are the model's or the
# server's configuration, not the schema's: token ids beyond the vocabulary, prompts beyond the
# context, max_tokens beyond --max-tokens-limit; those get a 400 that names the field.
# schemathesis's own pytest integration (`from_fixture`) does not run under pytest 9, so each
# operation's strategy is driven by Hypothesis directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_schema(api_schema, mode):
    statuses: list[int] = []
    for operation in operations(api_schema):
        if mode is GenerationMode.NEGATIVE and not operation.get_request_payload_content_types():
            continue  # no input to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            response = case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"},
                                              excluded_checks=[positive_data_acceptance])
            statuses.append(response.status_code)

        check()
    assert len(statuses) >= 150
    if mode is GenerationMode.POSITIVE:
        assert statuses.count(200) >= len(statuses) // 3


def test_no_sequence_left_behind(tiny_runner, api_schema):
    stats = wait_until_idle(tiny_runner)
    assert stats["free_blocks"] == stats["total_blocks"]
