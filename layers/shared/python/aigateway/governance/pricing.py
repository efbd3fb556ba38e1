"""Versioned prices and cost maths, in integers.

Money is integer micro-USD (1 USD = 1_000_000). Prices are quoted by providers in USD per 1M
tokens, which is exactly micro-USD per token; to keep fractions such as $0.075/1M exact we store
them as integer *nano*-USD per token and round a request's total up to whole micro-USD once
(never under-bill; the rounding is at most 1 micro-USD per ledger row).

Every price has an effective date, so a past request's cost can be recomputed with the price
that applied when it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from aigateway.errors import UnknownModel

MICROS_PER_USD = 1_000_000


@dataclass(frozen=True)
class Price:
    model: str
    effective_from: date
    input_nanos: int  # nano-USD per input token
    cached_input_nanos: int
    output_nanos: int

    @classmethod
    def per_million(cls, model: str, effective_from: str, inp: str, cached: str, out: str) -> Price:
        def nanos(usd_per_million: str) -> int:
            value = Decimal(usd_per_million) * 1000  # USD/1M tokens == µUSD/token; ×1000 → nUSD
            if value != value.to_integral_value():
                raise ValueError(f"{model}: price {usd_per_million} is finer than 1 nano-USD/token")
            return int(value)

        return cls(model, date.fromisoformat(effective_from), nanos(inp), nanos(cached), nanos(out))


# OpenAI list prices, USD per 1M tokens (input, cached input, output). Add a row with a new
# effective date to change a price; never edit a past row.
PRICES: tuple[Price, ...] = (
    Price.per_million("gpt-4o-mini", "2024-07-18", "0.15", "0.075", "0.60"),
    Price.per_million("gpt-4o", "2024-08-06", "2.50", "1.25", "10.00"),
    Price.per_million("gpt-4.1", "2025-04-14", "2.00", "0.50", "8.00"),
    Price.per_million("gpt-4.1-mini", "2025-04-14", "0.40", "0.10", "1.60"),
    Price.per_million("gpt-4.1-nano", "2025-04-14", "0.10", "0.025", "0.40"),
    Price.per_million("o3", "2025-04-16", "10.00", "2.50", "40.00"),
    Price.per_million("o3", "2025-06-10", "2.00", "0.50", "8.00"),
    Price.per_million("o3-mini", "2025-01-31", "1.10", "0.55", "4.40"),
    Price.per_million("o4-mini", "2025-04-16", "1.10", "0.275", "4.40"),
    Price.per_million("gpt-5", "2025-08-07", "1.25", "0.125", "10.00"),
    Price.per_million("gpt-5-mini", "2025-08-07", "0.25", "0.025", "2.00"),
    Price.per_million("gpt-5-nano", "2025-08-07", "0.05", "0.005", "0.40"),
)


def price_for(model: str, at: date | datetime) -> Price:
    """The price in force for `model` on `at`; an unpriced model is refused, never billed at 0."""
    day = at.date() if isinstance(at, datetime) else at
    candidates = [p for p in PRICES if p.model == model and p.effective_from <= day]
    if not candidates:
        raise UnknownModel(f"model {model!r} has no price in force on {day.isoformat()}", field="model")
    return max(candidates, key=lambda p: p.effective_from)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_micros(price: Price, *, input_tokens: int, cached_tokens: int, output_tokens: int) -> int:
    """Cost of one call in micro-USD, rounded up once. `input_tokens` includes cached ones."""
    if min(input_tokens, cached_tokens, output_tokens) < 0 or cached_tokens > input_tokens:
        raise ValueError("token counts must be non-negative and cached <= input")
    nanos = (
        (input_tokens - cached_tokens) * price.input_nanos
        + cached_tokens * price.cached_input_nanos
        + output_tokens * price.output_nanos
    )
    return _ceil_div(nanos, 1000)


def worst_case_micros(price: Price, *, input_tokens: int, max_output_tokens: int) -> int:
    """Upper bound for a call before it runs: no cache discount, every output token used."""
    return cost_micros(price, input_tokens=input_tokens, cached_tokens=0, output_tokens=max_output_tokens)


def micros_to_usd(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD
