"""Pricing: every catalog model is priced, prices are versioned by date, costs are exact integers."""

from __future__ import annotations

from datetime import date

import pytest

from aigateway.errors import UnknownModel
from aigateway.governance.pricing import PRICES, Price, cost_micros, price_for, worst_case_micros
from aigateway.llm.catalog import MODELS


def test_every_model_the_catalog_offers_has_a_price_in_force_today() -> None:
    today = date(2026, 11, 22)
    unpriced = [name for name in MODELS if not any(p.model == name and p.effective_from <= today for p in PRICES)]
    assert unpriced == []
    for name in MODELS:
        assert price_for(name, today).model == name


def test_an_unpriced_model_is_refused_never_billed_at_zero() -> None:
    with pytest.raises(UnknownModel) as refused:
        price_for("gpt-unknown", date(2026, 1, 1))
    assert refused.value.code == "unknown_model" and refused.value.field == "model"
    # A model priced only from a later date is refused for earlier requests too
    with pytest.raises(UnknownModel):
        price_for("gpt-5", date(2025, 8, 6))


def test_the_price_in_force_on_the_day_is_applied_so_past_costs_can_be_recomputed() -> None:
    # o3 was repriced on 2025-06-10: a call the day before keeps the old price
    before, after = price_for("o3", date(2025, 6, 9)), price_for("o3", date(2025, 6, 10))
    assert (before.effective_from, before.input_nanos) == (date(2025, 4, 16), 10_000)
    assert (after.effective_from, after.input_nanos) == (date(2025, 6, 10), 2_000)
    usage = {"input_tokens": 1000, "cached_tokens": 0, "output_tokens": 1000}
    assert cost_micros(before, **usage) == 50_000 and cost_micros(after, **usage) == 10_000


def test_costs_are_integer_micro_usd_rounded_up_once() -> None:
    mini = price_for("gpt-4o-mini", date(2026, 1, 1))  # 0.15 / 0.075 / 0.60 USD per 1M tokens
    assert (mini.input_nanos, mini.cached_input_nanos, mini.output_nanos) == (150, 75, 600)
    # 1 input token = 150 nano-USD -> rounds up to 1 micro-USD (never under-billed)
    assert cost_micros(mini, input_tokens=1, cached_tokens=0, output_tokens=0) == 1
    # 1500 input of which 1024 cached + 120 output: 476*150 + 1024*75 + 120*600 = 220_200 nUSD -> 221 µUSD
    assert cost_micros(mini, input_tokens=1500, cached_tokens=1024, output_tokens=120) == 221
    assert cost_micros(mini, input_tokens=0, cached_tokens=0, output_tokens=0) == 0


@pytest.mark.parametrize("bad", [{"input_tokens": -1}, {"cached_tokens": 10, "input_tokens": 5}])
def test_impossible_token_counts_are_rejected(bad: dict[str, int]) -> None:
    usage = {"input_tokens": 5, "cached_tokens": 0, "output_tokens": 0, **bad}
    with pytest.raises(ValueError):
        cost_micros(price_for("gpt-4o", date(2026, 1, 1)), **usage)


def test_the_worst_case_bounds_every_real_outcome_of_the_call() -> None:
    for name in MODELS:
        price = price_for(name, date(2026, 11, 1))
        worst = worst_case_micros(price, input_tokens=800, max_output_tokens=300)
        for cached in (0, 400, 800):
            for out in (0, 150, 300):
                assert cost_micros(price, input_tokens=800, cached_tokens=cached, output_tokens=out) <= worst


def test_a_price_finer_than_one_nano_usd_per_token_is_refused() -> None:
    with pytest.raises(ValueError, match="finer than 1 nano-USD"):
        Price.per_million("x", "2026-01-01", "0.0001", "0", "0")
