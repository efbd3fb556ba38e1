"""`Idempotency-Key` for POST endpoints: a client retry never runs (or bills) twice.

Every POST handler wraps its one logic call in `once(...)`. Without a key it just runs. With one,
Powertools' idempotency utility (DynamoDB persistence, the Idempotency table) makes the call at
most once per (tenant, route, key) for 24 hours:

- the record id is a hash of tenant + route + the client's key, so one tenant's key can never
  replay another tenant's response, and one key may be used on two routes independently;
- the request body is hashed alongside: the same key with a different body is 422
  `idempotency_key_reused`;
- while the first call runs, a duplicate gets 409 `idempotency_in_progress` with `Retry-After: 1`;
  the in-progress record expires with the first invocation (the Lambda context is registered), so
  a crashed or timed-out first attempt does not block retries for 24 hours;
- a completed call stores its status, body and headers; a replay answers with those plus
  `Idempotent-Replayed: true`;
- a call that raises (any error: 4xx or 5xx) is not stored — Powertools deletes the in-progress
  record — so a retry after an error runs again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from aigateway.errors import IdempotencyInProgress, IdempotencyKeyReused, InvalidIdempotencyKey
from aigateway.observability import logger

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer, IdempotencyConfig
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
EXPIRES_AFTER_S = 24 * 60 * 60
MAX_KEY_LENGTH = 255
# Record ids are "<prefix>#<sha256 of the scope>". One constant for every route: Powertools sets
# the prefix on the (shared, per-environment) persistence layer at each call, so it must not vary.
KEY_PREFIX = "aigateway"


class Reply(NamedTuple):
    """What a POST handler answers: status, JSON body, headers. What a completed call stores."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class Scope:
    """Whose key it is and where it was used: the record id is derived from all three."""

    tenant_id: str
    route: str  # "POST /v1/generate"
    key: str


def validate_key(key: str) -> str:
    """1–255 visible ASCII characters (0x21–0x7E); anything else is 400 invalid_idempotency_key."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all("!" <= ch <= "~" for ch in key):
        raise InvalidIdempotencyKey(
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} visible ASCII characters (no spaces)", field=HEADER
        )
    return key


def once(
    store: Callable[[], BasePersistenceLayer],
    *,
    tenant_id: str,
    route: str,
    key: str | None,
    payload: dict[str, Any],
    run: Callable[[], Reply],
    lambda_context: Any,
) -> Reply:
    """Runs `run()` at most once per (tenant, route, key); see the module docstring.

    `store` is a factory (`deps.idempotency_store`), called only when a key is present, so a
    request without one touches neither the table nor Powertools. `payload` is the request as
    validated (a dict), hashed to detect a key reused with a different request.
    """
    if key is None:
        return run()
    scope = Scope(tenant_id, route, validate_key(key))

    from aws_lambda_powertools.utilities.idempotency import idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyPersistenceLayerError,
        IdempotencyValidationError,
    )

    # A config per call: Powertools reads the Lambda context and the hook from it per call (the
    # persistence layer took the rest once, in `prepare`).
    config = _config(response_hook=_replayed)
    config.register_lambda_context(lambda_context)

    outcome: dict[str, Any] = {}

    def call(request: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = run()
        except Exception as exc:
            outcome["error"] = exc
            raise
        outcome["reply"] = reply
        return reply._asdict()

    idempotent = idempotent_function(
        call, data_keyword_argument="request", persistence_store=store(), config=config, key_prefix=KEY_PREFIX
    )
    request = {
        "scope": {"tenant": scope.tenant_id, "route": scope.route, "key": scope.key},
        "payload": payload,
    }
    try:
        stored = idempotent(request=request)
    except IdempotencyAlreadyInProgressError:
        raise IdempotencyInProgress(
            f"a request with this {HEADER} is still in progress; retry shortly",
            field=HEADER,
            headers={"Retry-After": "1"},
        ) from None
    except IdempotencyValidationError:
        raise IdempotencyKeyReused(
            f"this {HEADER} was already used with a different request body", field=HEADER
        ) from None
    except IdempotencyPersistenceLayerError:
        # The store failed around a call that already ran: the caller gets what the call gave
        # (its answer, or its own error), not a 500 for work that was done. Without the record a
        # retry may run again (after the in-progress record expires with this invocation).
        if "error" in outcome:
            raise outcome["error"] from None
        if "reply" in outcome:
            logger().exception("idempotency record not saved; answering without it", extra={"route": route})
            return Reply(*outcome["reply"])
        raise
    return Reply(int(stored["status"]), stored["body"], dict(stored["headers"]))


def prepare(store: BasePersistenceLayer) -> BasePersistenceLayer:
    """Configures a new persistence layer before its first use.

    Powertools configures a layer on first use and then ignores later configs; doing it here,
    once, means concurrent first uses (threads in the local runtime) cannot see it half-done.
    """
    store.configure(config=_config(), key_prefix=KEY_PREFIX)
    return store


def _config(**extra: Any) -> IdempotencyConfig:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

    return IdempotencyConfig(
        event_key_jmespath="scope",  # the record id: tenant + route + key
        payload_validation_jmespath="payload",  # the request: reusing a key with another is 422
        raise_on_no_idempotency_key=True,
        expires_after_seconds=EXPIRES_AFTER_S,
        hash_function="sha256",
        **extra,
    )


def _replayed(response: Any, idempotent_data: DataRecord) -> Any:
    """Powertools' response hook: runs only when a stored response is returned instead of a call."""
    logger().info("idempotent replay", extra={"idempotency_record": idempotent_data.idempotency_key})
    return {**response, "headers": {**response.get("headers", {}), REPLAYED_HEADER: "true"}}
