"""Bad input and bad keys: a clear 4xx with a machine-readable code, nothing written, no trace."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.local.runtime import LocalStack
from tests.conftest import Client
from tests.integration.test_generate import SKILL, ledger_rows


def assert_error(reply: Any, status: int, code: str, field: str | None = None) -> None:
    assert reply.status == status, reply.body
    error = reply.body["error"]
    assert error["code"] == code, error
    assert error["message"] and "Traceback" not in error["message"]
    if field is not None:
        assert error.get("field") == field, error
    assert reply.body["request_id"] == reply.headers["x-request-id"]


def test_missing_key_is_refused_by_api_gateway(client: Client, simulator: Any) -> None:
    reply = client.post("/v1/generate", SKILL, key=None)
    # API Gateway answers for a missing identity source without calling the authorizer
    assert reply.status == 401 and reply.body == {"message": "Unauthorized"}
    assert simulator.stats()["requests"] == 0


@pytest.mark.parametrize("key", ["aig_not_a_real_key", "garbage"])
def test_wrong_key_gets_401_with_error_body(client: Client, simulator: Any, key: str) -> None:
    reply = client.post("/v1/generate", SKILL, key=key)
    assert_error(reply, 401, "unauthorized")
    assert simulator.stats()["requests"] == 0


def test_non_bearer_scheme_is_unauthorized(client: Client) -> None:
    reply = client.request(
        "POST", "/v1/generate", SKILL, key=None, headers={"authorization": f"Basic {client.api_key}"}
    )
    assert_error(reply, 401, "unauthorized")


CASES = [
    ("unknown template", {**SKILL, "template": "no_such_template"}, 404, "unknown_template", "template"),
    ("unknown version", {**SKILL, "version": 99}, 404, "unknown_template", "version"),
    (
        "missing variable",
        {**SKILL, "variables": {"skill": "SQL", "question": "q?"}},
        422,
        "validation_error",
        "variables.answer",
    ),
    (
        "extra variable",
        {**SKILL, "variables": {**SKILL["variables"], "surprise": 1}},
        422,
        "validation_error",
        "variables.surprise",
    ),
    (
        "wrong variable type",
        {**SKILL, "variables": {**SKILL["variables"], "skill": ["SQL"]}},
        422,
        "validation_error",
        "variables.skill",
    ),
    ("unknown top-level field", {**SKILL, "temperature": 2}, 422, "validation_error", "temperature"),
    ("template missing", {"variables": {}}, 422, "validation_error", "template"),
    ("max_tokens too small", {**SKILL, "max_tokens": 1}, 422, "validation_error", "max_tokens"),
    ("unknown profile", {**SKILL, "model_profile": "turbo"}, 400, "unknown_model", "model_profile"),
]


@pytest.mark.parametrize(("case", "body", "status", "code", "field"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    client: Client,
    stack: LocalStack,
    simulator: Any,
    case: str,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str,
) -> None:
    reply = client.post("/v1/generate", body)
    assert_error(reply, status, code, field)
    assert simulator.stats()["requests"] == 0
    assert ledger_rows(stack) == []


def test_invalid_json_is_400(client: Client, stack: LocalStack) -> None:
    reply = client.post("/v1/generate", raw=b'{"template": "skill_assessment",')
    assert_error(reply, 400, "invalid_json", "body")
    assert ledger_rows(stack) == []


def test_oversized_body_is_413(client: Client, stack: LocalStack) -> None:
    huge = {**SKILL, "variables": {**SKILL["variables"], "answer": "x" * 300_000}}
    reply = client.post("/v1/generate", raw=json.dumps(huge).encode())
    assert_error(reply, 413, "payload_too_large", "body")
    assert ledger_rows(stack) == []


def test_unknown_route_is_404(client: Client) -> None:
    reply = client.post("/v1/nothing-here", {})
    assert reply.status == 404
