"""Identifiers: time-sortable request ids (ULID layout) and API keys."""

from __future__ import annotations

import os
import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now_ms: int | None = None) -> str:
    """A 26-character ULID: 48-bit millisecond time + 80 random bits, sortable by creation time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def id_time_ms(ulid: str) -> int:
    value = 0
    for ch in ulid[:10]:
        value = value * 32 + _CROCKFORD.index(ch)
    return value


def new_api_key() -> tuple[str, str]:
    """Returns (key_id, secret key). The key embeds its id so logs can name a key without the secret."""
    key_id = secrets.token_hex(6)
    return key_id, f"aig_{key_id}_{secrets.token_urlsafe(24)}"
