"""Prompt experiments, pure parts: sticky weighted assignment over 10,000 synthetic users, precedence
(request version > pin > split > latest), locale variants in the registry, the report's arithmetic."""

from __future__ import annotations

import math
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from aigateway.auth import Principal
from aigateway.errors import TemplateError, UnknownTemplate
from aigateway.experiments import (
    PINNED,
    REQUESTED,
    Experiment,
    ExperimentIn,
    VariantIn,
    aggregate,
    assign,
    choose_template,
    compare,
    order_groups,
    proportions_p,
    report_range,
    student_t_two_sided,
    subject_of,
    welch_p,
)
from aigateway.experiments import _variant_report as variant_report
from aigateway.prompts.registry import TemplateRegistry, locale_fallbacks, normalize_locale

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
USERS = [f"user-{i:05d}" for i in range(10_000)]
TENANT, TEMPLATE, SALT = "acme", "skill_assessment", "0f1e2d3c4b5a6978"  # a fixed salt: the test is deterministic


def split(*weights: int, salt: str = SALT) -> Experiment:
    variants = tuple(VariantIn(name=f"v{i}", version=i + 1, weight=w) for i, w in enumerate(weights))
    return Experiment(template=TEMPLATE, variants=variants, salt=salt, version=1)


def assigned(experiment: Experiment | None, user: str, version: int | None = None) -> str | None:
    return assign(experiment, tenant_id=TENANT, subject=subject_of("key-user", user), requested_version=version).variant


def three_sigma(n: int, p: float) -> float:
    """The tolerance: 3 standard deviations of a binomial count (a 0.27 % two-sided miss for a fair hash)."""
    return 3 * math.sqrt(n * p * (1 - p))


# --- stickiness and distribution ---------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(70, 30), (50, 30, 20), (1, 1, 1, 1)])
def test_variant_stickiness_and_weight_distribution_within_tolerance_over_10000_users(weights: tuple[int, ...]) -> None:
    # Given a split, and the same split as another environment would rebuild it from its stored item
    experiment = split(*weights)
    rebuilt = Experiment.model_validate(experiment.model_dump(mode="json"))
    # When 10,000 users are assigned, twice each
    first = {u: assigned(experiment, u) for u in USERS}
    again = {u: assigned(rebuilt, u) for u in USERS}
    # Then every user keeps their variant
    sticky = sum(first[u] == again[u] for u in USERS)
    counts = Counter(first.values())
    total = sum(weights)
    lines = []
    for i, w in enumerate(weights):
        expected = len(USERS) * w / total
        tolerance = three_sigma(len(USERS), w / total)
        lines.append(f"v{i} weight {w}: {counts[f'v{i}']} (expected {expected:.0f} ± {tolerance:.0f})")
        # And each variant's share is within 3 binomial standard deviations of its weight
        assert abs(counts[f"v{i}"] - expected) <= tolerance, lines[-1]
    print(f"stickiness {sticky}/{len(USERS)}; " + "; ".join(lines))
    assert sticky == len(USERS)
    assert sum(counts.values()) == len(USERS)


def test_moving_weight_50_50_to_60_40_moves_about_ten_percent_of_users_and_only_towards_the_grown_variant() -> None:
    before = split(50, 50)
    after = split(60, 40)
    moves = Counter((assigned(before, u), assigned(after, u)) for u in USERS)
    moved = sum(n for (a, b), n in moves.items() if a != b)
    tolerance = three_sigma(len(USERS), 0.10)
    print(
        f"50/50 → 60/40: {moved} of {len(USERS)} users moved ({moved / len(USERS):.2%}); "
        f"expected 1000 ± {tolerance:.0f}"
    )
    assert abs(moved - 1000) <= tolerance
    assert moves[("v0", "v1")] == 0  # nobody leaves the variant that grew
    # A new salt is a new experiment: assignment is independent of the old one (about half agree)
    reshuffled = split(50, 50, salt="another-salt")
    agree = sum(assigned(before, u) == assigned(reshuffled, u) for u in USERS)
    print(
        f"new salt: {agree} of {len(USERS)} users kept their variant (expected 5000 ± {three_sigma(10_000, 0.5):.0f})"
    )
    assert abs(agree - 5000) <= three_sigma(10_000, 0.5)


def test_assignment_depends_on_tenant_template_and_subject_kind() -> None:
    experiment = split(50, 50)
    other_tenant = sum(
        assigned(experiment, u)
        == assign(experiment, tenant_id="other", subject=subject_of("key-user", u), requested_version=None).variant
        for u in USERS[:2000]
    )
    print(f"same users, another tenant: {other_tenant}/2000 agree")
    assert abs(other_tenant - 1000) <= three_sigma(2000, 0.5)
    # An end-user id never collides with a key user's id of the same spelling
    assert subject_of("alice", None) != subject_of("x", "alice")
    assert subject_of("alice", None) == "key:alice" and subject_of("alice", "bob") == "end:bob"


def test_a_zero_weight_variant_gets_nobody() -> None:
    experiment = split(0, 1, 0)
    assert {assigned(experiment, u) for u in USERS[:2000]} == {"v1"}


# --- precedence ----------------------------------------------------------------------------------------


def test_request_version_overrides_pin_and_split_and_pin_overrides_split() -> None:
    pinned = Experiment(template=TEMPLATE, pinned_version=2, salt=SALT, version=3)
    splitting = split(50, 50)
    for user in USERS[:200]:
        # The request's version beats everything, labelled `request`
        for experiment in (pinned, splitting, None):
            chosen = assign(experiment, tenant_id=TENANT, subject=user, requested_version=1)
            assert (chosen.version, chosen.variant) == (1, REQUESTED)
        # A pin beats the split (an experiment holds one or the other; the stored pin is what counts)
        chosen = assign(pinned, tenant_id=TENANT, subject=user, requested_version=None)
        assert (chosen.version, chosen.variant) == (2, PINNED)
    # No experiment, or one that was ended ({}): the latest version, no label
    ended = Experiment(template=TEMPLATE, salt=SALT, version=4)
    for experiment in (None, ended):
        chosen = assign(experiment, tenant_id=TENANT, subject="u", requested_version=None)
        assert (chosen.version, chosen.variant) == (None, None)


class FakeConfigs:
    """ExperimentConfigs' read side, without DynamoDB."""

    def __init__(self, experiment: Experiment | None):
        self.experiment = experiment
        self.reads = 0

    def for_template(self, tenant_id: str, template: str, *, fresh: bool = False) -> Experiment:
        self.reads += 1
        return self.experiment or Experiment(template=template)


def test_choose_template_serves_the_assigned_version_and_survives_a_removed_version() -> None:
    registry = TemplateRegistry(PROMPTS)
    principal = Principal(tenant_id=TENANT, user_id="u1", key_id="k1", role="member")
    latest = max(registry.versions(TEMPLATE))
    configs = FakeConfigs(Experiment(template=TEMPLATE, pinned_version=1, salt=SALT, version=1))

    def choose(version: int | None = None, locale: str | None = None, configs: Any = configs) -> tuple[int, Any]:
        template, variant = choose_template(
            TEMPLATE,
            principal=principal,
            requested_version=version,
            locale=locale,
            end_user=None,
            templates=registry,
            experiments=configs,
        )
        return template.version, variant

    assert choose() == (1, PINNED)
    reads = configs.reads
    assert choose(version=1) == (1, REQUESTED) and configs.reads == reads  # a named version reads no experiment
    # A pin on a version a later deploy removed: the latest serves, unlabelled (not credited to the pin)
    gone = FakeConfigs(Experiment(template=TEMPLATE, pinned_version=99, salt=SALT, version=2))
    assert choose(configs=gone) == (latest, None)
    # But a version the caller names must exist
    with pytest.raises(UnknownTemplate) as info:
        choose(version=99)
    assert info.value.field == "version"
    with pytest.raises(UnknownTemplate):
        choose_template(
            "no_such_template",
            principal=principal,
            requested_version=None,
            locale=None,
            end_user=None,
            templates=registry,
            experiments=configs,
        )


# --- settings validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"variants": [{"name": "a", "version": 1, "weight": 1}, {"name": "a", "version": 2, "weight": 1}]}, "unique"),
        ({"variants": [{"name": "pinned", "version": 1, "weight": 1}]}, "reserved"),
        (
            {"variants": [{"name": "a", "version": 1, "weight": 0}, {"name": "b", "version": 2, "weight": 0}]},
            "more than 0",
        ),
        ({"variants": [{"name": "a", "version": 1, "weight": -1}]}, "greater than or equal"),
        ({"variants": [{"name": f"v{i}", "version": 1, "weight": 1} for i in range(11)]}, "at most 10"),
        ({"pinned_version": 1, "variants": [{"name": "a", "version": 1, "weight": 1}]}, "not both"),
        ({"variants": [{"name": "Bad Name", "version": 1, "weight": 1}]}, "pattern"),
        ({"pinned_version": 0}, "greater than or equal"),
    ],
)
def test_bad_experiments_are_refused_with_the_reason(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ExperimentIn.model_validate(body)
    assert message in str(info.value)


def test_an_empty_body_ends_the_experiment() -> None:
    for body in ({}, {"variants": []}, {"pinned_version": None}):
        settings = ExperimentIn.model_validate(body)
        assert settings.pinned_version is None and settings.variants == []


# --- locales ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("fr", "fr"),
        ("FR", "fr"),
        ("pt_br", "pt-BR"),
        ("pt-BR", "pt-BR"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("es-419", "es-419"),
    ],
)
def test_locales_are_normalised(raw: str, canonical: str) -> None:
    assert normalize_locale(raw) == canonical


@pytest.mark.parametrize("bad", ["french", "f", "fr-", "fr-CAN", "12", "fr-CA-x", ""])
def test_malformed_locales_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a locale"):
        normalize_locale(bad)


def test_locale_fallback_exact_then_language_then_default() -> None:
    registry = TemplateRegistry(PROMPTS)
    served = {
        loc: registry.get("project_insights", 1, loc).locale for loc in ("fr", "fr-CA", "es-MX", "de", "pt-BR", None)
    }
    print(f"project_insights@1 locales {registry.locales('project_insights', 1)}; served: {served}")
    assert served == {"fr": "fr", "fr-CA": "fr", "es-MX": "es", "de": "en", "pt-BR": "en", None: "en"}
    assert locale_fallbacks("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh"]
    # The French variant is a translation: same contract, French words
    fr, en = registry.get("project_insights", 1, "fr"), registry.get("project_insights", 1)
    assert fr.variables == en.variables and fr.output_schema == en.output_schema and fr.ref == en.ref
    assert "en français" in fr.system and "Analysez le projet" in fr.user and "Analyse the project" in en.user
    assert fr.fallback is not None and "indisponible" in fr.fallback["summary"]
    es = registry.get("project_insights", 1, "es")
    assert "en español" in es.system and es.fallback is not None and "no está disponible" in es.fallback["summary"]


def copy_template(tmp_path: Path, name: str = "project_insights") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(PROMPTS / name / "v1.yaml", folder / "v1.yaml")
    return folder


def write_variant(folder: Path, file: str, **changes: Any) -> None:
    raw = yaml.safe_load((PROMPTS / "project_insights" / "v1.fr.yaml").read_text(encoding="utf-8"))
    raw.update(changes)
    (folder / file).write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "changes", "message"),
    [
        ("v1.de.yaml", {"locale": "fr"}, "disagrees with the file name"),
        (
            "v1.de.yaml",
            {"locale": "de", "variables": {"type": "object", "properties": {}}},
            "variables must be identical",
        ),
        ("v1.de.yaml", {"locale": "de", "output_schema": None}, "output_schema must be identical"),
        ("v2.de.yaml", {"locale": "de", "version": 2}, "no default file v2.yaml"),
        ("v1.en.yaml", {"locale": "en"}, "already serves locale 'en'"),
        ("v1.fr-ca.yaml", {"locale": "fr-CA"}, "disagrees with the file name"),
    ],
)
def test_a_locale_file_that_is_not_a_translation_of_its_default_is_refused_at_load(
    tmp_path: Path, file: str, changes: dict[str, Any], message: str
) -> None:
    folder = copy_template(tmp_path)
    write_variant(folder, file, **changes)
    with pytest.raises(TemplateError, match=message):
        TemplateRegistry(tmp_path)


# --- the report's arithmetic -------------------------------------------------------------------------------


def row(rid: str, attempt: int, outcome: str, *, variant: str | None, version: int, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "attempt": attempt,
        "template": f"{TEMPLATE}@{version}",
        "variant": variant,
        "outcome": outcome,
        "latency_ms": extra.pop("latency_ms", 100),
        "cost_micros": extra.pop("cost_micros", 0),
        **extra,
    }


def test_report_definitions_on_known_rows() -> None:
    rows = [
        # control: 3 requests — a success, a cache hit, a static answer after a failure
        row("A1", 0, "success", variant="control", version=1, latency_ms=100, cost_micros=300),
        row("A2", 0, "cache_hit", variant="control", version=1, latency_ms=5),
        row("A3", 0, "failure", variant="control", version=1, error_code="provider_timeout"),
        row("A3", 1, "fallback", variant="control", version=1, error_code="provider_timeout"),
        # concise: 2 requests — invalid then repaired (2 answers, 1 valid), and an outright failure
        row("B1", 0, "failure", variant="concise", version=2, error_code="invalid_model_output", cost_micros=100),
        row("B1", 1, "success", variant="concise", version=2, latency_ms=400, cost_micros=101),
        row("B2", 0, "failure", variant="concise", version=2, error_code="provider_error"),
        # no experiment
        row("C1", 0, "success", variant=None, version=2, latency_ms=50, cost_micros=7),
    ]
    feedback = [
        {"variant": "control", "version": 1, "rating": 5},
        {"variant": "control", "version": 1, "rating": 4},
        {"variant": "concise", "version": 2, "rating": 2},
    ]
    experiment = Experiment(
        template=TEMPLATE,
        variants=(VariantIn(name="control", version=1, weight=1), VariantIn(name="concise", version=2, weight=1)),
        salt=SALT,
        version=1,
    )
    groups = aggregate(reversed(rows), feedback)  # row order does not matter
    keys = order_groups(groups, experiment)
    assert keys == [("control", 1, None), ("concise", 2, None), (None, 2, None)]
    control, concise, none = compare([variant_report(k, groups[k]) for k in keys], groups)
    print(control.model_dump(), concise.model_dump(), sep="\n")
    assert (control.requests, control.provider_answers, control.schema_valid_rate) == (3, 1, 1.0)
    assert (control.cache_hits, control.fallback_requests, control.fallback_rate, control.failed_requests) == (
        1,
        1,
        0.3333,
        0,
    )
    assert (control.latency_p50_ms, control.latency_p95_ms) == (100, 100)  # only model-answered requests
    assert (control.cost_micros, control.cost_per_request_micros, control.cost_per_request_usd) == (
        300,
        100,
        "0.000100",
    )
    assert (control.feedback.count, control.feedback.mean, control.feedback.distribution["5"]) == (2, 4.5, 1)
    assert (concise.requests, concise.provider_answers, concise.schema_valid_answers, concise.schema_valid_rate) == (
        2,
        2,
        1,
        0.5,
    )
    assert concise.failed_requests == 1 and concise.cost_per_request_micros == 101  # 201 / 2 = 100.5 → 101 (half up)
    assert control.vs_first is None and concise.vs_first is not None
    assert concise.vs_first.schema_valid_rate == -0.5 and concise.vs_first.mean_rating == -2.5
    assert concise.vs_first.latency_p50_ms == 300 and concise.vs_first.cost_per_request_micros == 1
    assert none.variant is None and none.requests == 1 and none.feedback.mean is None and none.vs_first is not None
    assert none.vs_first.mean_rating is None  # no feedback on one side: no difference
    # p-values: 1 of 1 valid vs 1 of 2 (pooled z-test); one concise rating is too few for a t-test
    assert concise.vs_first.schema_valid_rate_p == proportions_p(1, 1, 1, 2) == 0.3865
    assert concise.vs_first.fallback_rate_p == proportions_p(1, 3, 0, 2) == 0.3613
    assert concise.vs_first.mean_rating_p is None and none.vs_first.schema_valid_rate_p == 1.0
    # A configured variant without traffic is still listed, with nothing to compare
    empty = order_groups({}, experiment)
    assert empty == [("control", 1, None), ("concise", 2, None)]


def test_significance_matches_textbook_values_and_is_calibrated() -> None:
    # Student's t critical values (two-sided 5 % and 1 %) from any t table
    for t, df, p in [(2.228, 10, 0.05), (2.086, 20, 0.05), (2.042, 30, 0.05), (3.169, 10, 0.01), (12.706, 1, 0.05)]:
        assert student_t_two_sided(t, df) == pytest.approx(p, abs=2e-4), (t, df)
    assert student_t_two_sided(0.0, 7) == pytest.approx(1.0)
    # 50/100 vs 65/100: pooled rate 0.575, z = 2.1456, p = 0.0319
    assert proportions_p(50, 100, 65, 100) == pytest.approx(0.0319, abs=1e-4)
    assert proportions_p(10, 10, 20, 20) == 1.0 and proportions_p(0, 0, 3, 4) is None
    # Welch: [4,5,4,5,4] vs [2,3,2,3,3]: means 4.4 / 2.6, both variances 0.3, t = -5.196, df = 8
    assert welch_p([4, 5, 4, 5, 4], [2, 3, 2, 3, 3]) == pytest.approx(round(student_t_two_sided(5.196152, 8), 4))
    assert welch_p([4, 5, 4, 5, 4], [2, 3, 2, 3, 3]) == pytest.approx(0.0008, abs=1e-4)
    assert welch_p([3, 3], [3, 3]) == 1.0 and welch_p([5, 5], [1, 1]) == 0.0 and welch_p([4], [1, 2]) is None
    # Calibration: over 500 A/A comparisons (same distribution on both sides) about 5 % come out
    # p < 0.05 (binomial 3σ: 10..40); a real shift (+1 on a 1..5 scale, capped at 5: mean 3.6 → 4.3,
    # z ≈ 3.3 at 60 ratings a side) is found with power ≈ 0.91 (3σ lower bound 0.87)
    rng = random.Random(5)
    runs = 500

    def ratings() -> list[int]:
        return [rng.choice((1, 2, 3, 3, 4, 4, 4, 5, 5, 5)) for _ in range(60)]

    def answers(rate: float) -> int:
        return sum(rng.random() < rate for _ in range(150))

    def significant(p: float | None) -> bool:
        return p is not None and p < 0.05

    false_ratings = sum(significant(welch_p(ratings(), ratings())) for _ in range(runs))
    false_rates = sum(significant(proportions_p(answers(0.8), 150, answers(0.8), 150)) for _ in range(runs))
    found = sum(significant(welch_p(ratings(), [min(5, x + 1) for x in ratings()])) for _ in range(runs))
    print(f"A/A p<0.05: ratings {false_ratings}/{runs}, rates {false_rates}/{runs}; +1 shift found {found}/{runs}")
    assert 10 <= false_ratings <= 40 and 10 <= false_rates <= 40
    assert found >= 0.87 * runs


def test_report_range_is_bounded_with_clear_errors() -> None:
    from datetime import date

    from aigateway.errors import InvalidDate, InvalidRange

    today = date(2026, 11, 22)
    assert report_range(None, None, today=today) == (date(2026, 10, 24), today)
    with pytest.raises(InvalidRange) as info:
        report_range("2026-01-01", "2026-11-22", today=today)
    assert info.value.field == "until" and "at most 92" in info.value.message
    with pytest.raises(InvalidRange):
        report_range("2026-11-22", "2026-11-01", today=today)
    with pytest.raises(InvalidDate) as bad:
        report_range("2026-02-30", None, today=today)
    assert bad.value.field == "since"


@pytest.mark.parametrize(
    ("request_id", "ok"),
    [
        ("01M815KM037Z1D9MKQ9DRS5AHG", True),
        ("01M815KM037Z1D9MKQ9DRS5AHG-r2", True),  # a job's retry
        ("01M815KM037Z1D9MKQ9DRS5AHG-03", True),  # a batch item
        ("01m815km037z1d9mkq9drs5ahg", False),
        ("01M815KM037Z1D9MKQ9DRS5AHU", False),  # U is not Crockford base32
        ("not-a-request", False),
    ],
)
def test_feedback_names_a_request_id_as_the_gateway_issues_them(request_id: str, ok: bool) -> None:
    from aigateway.experiments import FeedbackIn

    if ok:
        assert FeedbackIn(request_id=request_id, rating=3).request_id == request_id
    else:
        with pytest.raises(ValidationError):
            FeedbackIn(request_id=request_id, rating=3)
    with pytest.raises(ValidationError):  # ratings are whole numbers 1..5
        FeedbackIn(request_id="01M815KM037Z1D9MKQ9DRS5AHG", rating=6)
