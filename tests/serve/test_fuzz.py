"""The API fuzzed from its own OpenAPI document (schemathesis), against a real uvicorn: whatever
the body, no 5xx, no hang, and every response as the document describes it."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,  # noqa: E402
                                 status_code_conformance)
from serve_testing import running  # noqa: E402

from bertrt.serve import ServeSettings, create_app  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def base_url(served):
    # Small text limits keep each generated request cheap on the CPU (longer ones get 413).
    settings = ServeSettings(max_text_chars=2000, max_question_chars=200, max_inputs=4, timeout_s=20)
    with running(create_app(served, settings)) as client:
        yield str(client.base_url)


def test_no_server_errors(base_url):
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/qa", "/v1/embed", "/v1/classify", "/health", "/ready"}
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        # Bodies both as the document describes them and as it forbids (wrong types, missing fields).
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.method.upper() == "POST" else [])
        for mode in modes:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def call(case):
                response = case.call(base_url=base_url, timeout=20)
                statuses.setdefault(operation.path, set()).add(response.status_code)
                case.validate_response(response, checks=CHECKS)

            call()
    # The fuzzing reached the model, not only the validation.
    assert 200 in statuses["/v1/qa"] and 200 in statuses["/v1/embed"] and 422 in statuses["/v1/qa"]
