"""Opaque paging cursors: urlsafe base64 of a small JSON object.

A cursor only names where the previous page stopped; the partition to read is always rebuilt
from the caller's tenant, so an edited cursor cannot reach another tenant's items.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aigateway.errors import InvalidCursor

MAX_CURSOR = 1024


def encode_cursor(position: dict[str, Any] | None) -> str | None:
    if position is None:
        return None
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, keys: tuple[str, ...]) -> dict[str, str] | None:
    """The position a cursor names; invalid_cursor when it is not one this API issued."""
    if cursor is None:
        return None
    if not cursor or len(cursor) > MAX_CURSOR:
        raise InvalidCursor("cursor is empty or too long", field="cursor")
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("cursor is not one this API issued", field="cursor") from exc
    if (
        not isinstance(position, dict)
        or set(position) != set(keys)
        or not all(isinstance(position[k], str) for k in keys)
    ):
        raise InvalidCursor("cursor is not one this API issued", field="cursor")
    return position
