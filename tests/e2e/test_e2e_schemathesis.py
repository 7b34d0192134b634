"""Schemathesis against the served ``/openapi.json``: a bounded number of generated
requests per operation (valid and invalid bodies, from the documented request schemas),
through a real uvicorn server on the mock backend; no answer may be a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from npu_proxy.testing import LiveServer, make_app, test_settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

#: Generated requests per operation and mode (valid, invalid): about 25 operations.
EXAMPLES = 25
#: Operations whose feature is not offered: their 501 Not Implemented is the answer,
#: any other 5xx is still a failure.
UNSUPPORTED = frozenset({"POST /api/push", "POST /api/blobs/{digest}"})


def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                    case: schemathesis.Case) -> bool | None:
    """schemathesis' ``not_a_server_error``, but for the 501 of :data:`UNSUPPORTED`."""
    if response.status_code == 501 and case.operation.label in UNSUPPORTED:
        return None
    return not_a_server_error(ctx, response, case)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    # Pulls go to a closed loopback port: the error path runs, nothing leaves the machine.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with LiveServer(make_app(test_settings(tmp_path))) as live:
        yield live


@pytest.mark.timeout(600)
def test_no_generated_request_gets_a_server_error(server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.body for op in operations), "the schema documents no request body"
    failures: list[str] = []
    calls: list[str] = []
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE,
                     schemathesis.GenerationMode.NEGATIVE):
            cases = operation.as_strategy(generation_mode=mode)

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                      database=None, suppress_health_check=list(HealthCheck))
            @given(case=cases, _=st.just(None))
            def probe(case: schemathesis.Case, _: None) -> None:
                calls.append(case.operation.label)
                case.call_and_validate(base_url=server.url, checks=[no_server_error],
                                       timeout=60)

            try:
                probe()
            except Unsatisfiable:
                continue  # nothing in this operation can be made invalid (GET /health)
            except (AssertionError, FailureGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    assert len(set(calls)) == len(operations) and len(calls) > 10 * len(operations)


def test_every_route_that_reads_a_body_documents_it(server: LiveServer) -> None:
    document = httpx.get(server.url + "/openapi.json").json()
    without = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if method in ("post", "delete") and "requestBody" not in operation
    ]
    # push reads no body, a blob is not JSON, DELETE /v1/responses/{id} takes none
    assert set(without) <= {"DELETE /v1/responses/{response_id}", "POST /api/blobs/{digest}",
                            "POST /api/push"}
    assert "POST /api/chat" not in without and "POST /v1/messages" not in without
    for name, schema in document["components"]["schemas"].items():
        assert "$defs" not in schema, name


def test_path_parameters_are_declared_and_405_names_every_method(server: LiveServer) -> None:
    document = httpx.get(server.url + "/openapi.json").json()
    model = document["paths"]["/v1/models/{model_id}"]["get"]
    assert {"name": "model_id", "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1}} in model["parameters"]
    # GET and HEAD are two routes: a 405 names both, not the first one only
    refused = httpx.request("PUT", server.url + "/api/tags")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    assert httpx.get(server.url + "/api/tags").status_code == 200
    both = httpx.request("PATCH", server.url + "/v1/responses/abc")
    assert both.status_code == 405 and both.headers["allow"] == "DELETE, GET"
