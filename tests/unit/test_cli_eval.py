"""`python -m cli eval` over small datasets, against the in-process simulated provider (no network,
no OpenAI key is read): validity with and without scripted `schema_invalid` answers, keyword
coverage of a known answer, cost as pricing of the reported tokens, compare mode and its deltas,
bad lines by number, provider errors apart from invalid answers, the exit statuses, the JSON report.

Faults are aimed with the simulator's `marked` scripts (a marker string in a case's answer, or a
phrase only one template version's prompt contains), so they hit the same cases at any
concurrency; the compare test runs one call at a time to pin down the order of the calls.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from aigateway.governance.pricing import cost_micros, price_for
from aigateway.llm.client import ProviderConfig
from aigateway.llm.simulated import FaultPlan, SimulatedProvider, simulated_transport
from aigateway.prompts.registry import TemplateRegistry
from cli import eval as eval_cli
from cli.__main__ import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "prompts"
SHIPPED = ROOT / "docs" / "examples" / "eval" / "skill_assessment.jsonl"
ENV = {"PROVIDER": "simulated", "PROMPTS_DIR": str(PROMPTS)}  # never a real provider, whatever the shell has
V2_ONLY = "strict, fair assessor"  # in skill_assessment v2's system prompt, not in v1's


def case(case_id: str, answer: str, keywords: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    variables = {"skill": "SQL joins", "question": "What does a LEFT JOIN return?", "answer": answer}
    return {"id": case_id, "variables": variables, "expected_keywords": keywords or [], **extra}


FOUR = [
    case("a", "Every left row, with NULLs where the right side has no match.", ["NULL"]),
    case("b", "Only matching rows. MARK-B"),
    case("c", "All rows of both tables."),
    case("d", "The left table's rows, matched or not. MARK-D"),
]


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def simulator(plan: FaultPlan | None = None) -> tuple[SimulatedProvider, eval_cli.Llm]:
    provider = SimulatedProvider(plan or FaultPlan())
    client = OpenAI(
        api_key="simulated",
        base_url="http://simulated.invalid/v1",
        http_client=httpx.Client(transport=simulated_transport(provider)),
        max_retries=0,
    )
    return provider, (ProviderConfig("simulated", "simulated", None), client)


class Run:
    def __init__(self, code: int, out: str, err: str, report: dict[str, Any] | None, waits: list[float]):
        self.code, self.out, self.err, self.report, self.waits = code, out, err, report, waits

    def summary(self, version: int = 1) -> dict[str, Any]:
        assert self.report is not None
        return next(v["summary"] for v in self.report["versions"] if v["version"] == version)

    def cases(self, version: int = 1) -> dict[str, dict[str, Any]]:
        assert self.report is not None
        return {c["id"]: c for v in self.report["versions"] if v["version"] == version for c in v["cases"]}


def run_eval(
    tmp_path: Path,
    dataset: Path,
    *extra: str,
    plan: FaultPlan | None = None,
    llm: eval_cli.Llm | None = None,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    out = tmp_path / "report.json"
    argv = ["eval", "--template", "skill_assessment", "--version", "1", "--dataset", str(dataset)]
    args = build_parser().parse_args([*argv, "--json", str(out), *extra])
    waits: list[float] = []
    code = eval_cli.run(args, llm=llm or simulator(plan)[1], env=ENV, sleep=waits.append)
    captured = capsys.readouterr()
    report = json.loads(out.read_text(encoding="utf-8")) if out.exists() else None
    return Run(code, captured.out, captured.err, report, waits)


# --- validity ----------------------------------------------------------------------------------


def test_without_faults_every_answer_is_schema_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given four good cases and a provider without faults, then every answer validates against
    skill_assessment@1's output model, the rate is 100 %, and the exit status is 0."""
    result = run_eval(tmp_path, write_jsonl(tmp_path / "cases.jsonl", FOUR), "--concurrency", "4", capsys=capsys)
    assert result.code == 0, result.err
    summary = result.summary()
    assert (summary["cases"], summary["answered"], summary["valid"], summary["validity_rate"]) == (4, 4, 4, 1.0)
    assert summary["provider_errors"] == summary["input_errors"] == 0
    model = TemplateRegistry(PROMPTS).get("skill_assessment", 1).output_model
    assert model is not None
    for item in result.cases().values():
        assert item["status"] == "valid" and item["provider"] == "simulated" and item["attempts"] == 1
        model.model_validate(item["answer"])  # the report carries the validated answer
    assert "4/4 100.0%" in result.out
    assert "Spent nothing: 4 model calls to the simulated provider" in result.out


def test_scripted_schema_invalid_answers_lower_the_rate_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given schema_invalid answers scripted for cases b and d, then exactly those two are invalid
    (no repair), the rate is 2/4, and each names what the validator found wrong."""
    plan = FaultPlan(marked=(("MARK-B", ("schema_invalid",)), ("MARK-D", ("schema_invalid",))))
    result = run_eval(tmp_path, write_jsonl(tmp_path / "c.jsonl", FOUR), "--concurrency", "4", plan=plan, capsys=capsys)
    assert result.code == 0
    statuses = {key: c["status"] for key, c in result.cases().items()}
    assert statuses == {"a": "valid", "b": "invalid", "c": "valid", "d": "invalid"}
    summary = result.summary()
    assert (summary["valid"], summary["invalid"], summary["answered"], summary["validity_rate"]) == (2, 2, 4, 0.5)
    assert "Field required" in result.cases()["b"]["error"]  # the simulator drops a required property
    assert result.cases()["b"]["attempts"] == 1  # the first answer counts: nothing is repaired or retried
    assert "2/4 50.0%" in result.out
    assert "v1 b (line 2): invalid:" in result.out


def test_min_validity_gates_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given a 50 % validity rate, then --min-validity 0.9 exits 2 naming the version, and 0.5 (the
    rate exactly) exits 0."""
    dataset = write_jsonl(tmp_path / "c.jsonl", FOUR)
    plan = FaultPlan(marked=(("MARK-B", ("schema_invalid",)), ("MARK-D", ("schema_invalid",))))
    failing = run_eval(tmp_path, dataset, "--min-validity", "0.9", plan=plan, capsys=capsys)
    assert failing.code == 2
    assert "FAIL: skill_assessment@1 schema validity 50.0% is below --min-validity 90.0%" in failing.out
    passing = run_eval(tmp_path, dataset, "--min-validity", "0.5", plan=plan, capsys=capsys)
    assert passing.code == 0 and "FAIL" not in passing.out


def test_min_validity_in_compare_mode_names_only_the_version_below(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given two schema_invalid answers aimed at v2's prompt, then v1 passes --min-validity 0.9,
    v2 (2/4) does not, and the exit status is 2 for the run."""
    plan = FaultPlan(marked=((V2_ONLY, ("schema_invalid", "schema_invalid")),))
    dataset = write_jsonl(tmp_path / "c.jsonl", FOUR)
    result = run_eval(tmp_path, dataset, "--compare", "2", "--min-validity", "0.9", plan=plan, capsys=capsys)
    assert result.code == 2
    assert (result.summary(1)["validity_rate"], result.summary(2)["validity_rate"]) == (1.0, 0.5)
    assert "FAIL: skill_assessment@2 schema validity 50.0%" in result.out
    assert "FAIL: skill_assessment@1" not in result.out
    assert result.report is not None  # the report is written before the gate decides


def test_provider_errors_are_counted_apart_from_invalid_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given case b failing with 500 on every attempt and case d rate limited once, then b is a
    provider error after 1 + 2 retries (not an invalid answer, not in the validity rate), d is valid
    on its second attempt after a backoff wait, and the run still exits 0."""
    plan = FaultPlan(marked=(("MARK-B", ("500", "500", "500", "500")), ("MARK-D", ("429",))))
    result = run_eval(tmp_path, write_jsonl(tmp_path / "c.jsonl", FOUR), plan=plan, capsys=capsys)
    assert result.code == 0
    b, d = result.cases()["b"], result.cases()["d"]
    assert (b["status"], b["attempts"], b["cost_micros"], b["latency_ms"]) == ("provider_error", 3, 0, None)
    assert b["error"].startswith("provider_error:")
    assert (d["status"], d["attempts"]) == ("valid", 2)
    assert len(result.waits) == 3 and all(0 <= w <= eval_cli.MAX_RETRY_WAIT_S for w in result.waits)
    summary = result.summary()
    assert (summary["answered"], summary["valid"], summary["validity_rate"]) == (3, 3, 1.0)
    assert (summary["provider_errors"], summary["attempts"]) == (1, 7)


# --- keywords and cost -------------------------------------------------------------------------


def chat_body(content: str, *, prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",  # a dated snapshot: priced as the model asked for
        "system_fingerprint": "fp_simulated",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


KNOWN_ANSWER = {
    "score": 40,
    "level_demonstrated": "beginner",
    "feedback": "A LEFT JOIN keeps unmatched rows and fills the right side with null\nvalues.",
    "strengths": [],
    "improvements": [{"area": "Left\n  table", "suggestion": "Say that every left row is kept."}],
    "next_steps": ["Run a LEFT JOIN on two small tables."],
    "confidence": 0.8,
}


def test_keyword_coverage_and_cost_of_a_known_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given a known answer with known usage (1,000 input tokens of which 400 cached, 200 output),
    then the keywords are found case-insensitively in the answer's string values, across line
    breaks, but not in its keys; and the cost is gpt-4o-mini's list price of exactly those tokens:
    600 × $0.15/M + 400 × $0.075/M + 200 × $0.60/M = 240 micro-USD."""
    provider, llm = simulator()
    provider.queue_response(200, chat_body(json.dumps(KNOWN_ANSWER), prompt=1000, cached=400, completion=200))
    keywords = ["NULL", "left table", "INNER JOIN", "confidence"]  # "confidence" is only a key
    dataset = write_jsonl(tmp_path / "c.jsonl", [case("known", "Rows from the left.", keywords)])
    result = run_eval(tmp_path, dataset, llm=llm, capsys=capsys)
    known = result.cases()["known"]
    assert known["status"] == "valid"
    assert known["keywords_found"] == ["NULL", "left table"]
    assert known["keywords_missing"] == ["INNER JOIN", "confidence"]
    assert known["coverage"] == 0.5 and result.summary()["keyword_coverage"] == 0.5
    assert (known["input_tokens"], known["cached_tokens"], known["output_tokens"]) == (1000, 400, 200)
    assert known["cost_micros"] == 240 and known["cost_usd"] == 0.00024
    assert "$0.000240" in result.out


def test_cost_is_pricing_of_the_reported_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given simulated answers, then each case's cost is aigateway's pricing of the tokens the
    report shows, for the model the template uses, and the totals add up."""
    result = run_eval(tmp_path, write_jsonl(tmp_path / "c.jsonl", FOUR), capsys=capsys)
    assert result.report is not None
    price = price_for("gpt-4o-mini", datetime.now(UTC))
    for item in result.cases().values():
        assert item["model"] == "gpt-4o-mini" and item["input_tokens"] > 0 and item["output_tokens"] > 0
        expected = cost_micros(
            price,
            input_tokens=item["input_tokens"],
            cached_tokens=item["cached_tokens"],
            output_tokens=item["output_tokens"],
        )
        assert item["cost_micros"] == expected > 0
    total = sum(c["cost_micros"] for c in result.cases().values())
    summary = result.summary()
    assert summary["cost_micros"] == total == result.report["spend"]["cost_micros"]
    assert summary["mean_cost_micros"] == total / 4
    assert summary["input_tokens"] == sum(c["input_tokens"] for c in result.cases().values())
    assert result.report["spend"]["billed"] is False


@pytest.mark.parametrize(
    ("keywords", "text", "found"),
    [
        (["SQL", "left join"], "Use a LEFT\n\tJOIN in sql.", ["SQL", "left join"]),
        (["Straße"], "STRASSE", ["Straße"]),  # casefold, not lower()
        (["null"], "nullable", ["null"]),  # substring: stems match
        (["inner join"], "innerjoin", []),
    ],
)
def test_keyword_matching(keywords: list[str], text: str, found: list[str]) -> None:
    assert eval_cli.keyword_coverage(keywords, text)[0] == found


def test_answer_text_is_every_string_value_not_the_keys() -> None:
    text = eval_cli.answer_text({"feedback": "Good", "n": 3, "items": [{"area": "Joins"}, "x"], "ok": True})
    assert text.split("\n") == ["Good", "", "Joins", "x", ""]


def test_percentiles_are_nearest_rank() -> None:
    assert eval_cli.percentile(list(range(10, 0, -1)), 0.50) == 5
    assert eval_cli.percentile(list(range(1, 11)), 0.95) == 10
    assert eval_cli.percentile(list(range(1, 101)), 0.95) == 95
    assert eval_cli.percentile([7], 0.95) == 7 and eval_cli.percentile([], 0.5) is None


# --- compare -----------------------------------------------------------------------------------


def test_compare_runs_both_versions_on_the_same_cases_with_deltas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given --compare 2, one call at a time and the second call scripted schema_invalid, then both
    versions run every case, calls interleave case by case (so the second call is v2 on case a,
    not v1 on case b), and the comparison gives -25 validity points, the ratios of the two
    summaries, and case a as valid in v1 only."""
    # A floor under every call's latency: an in-process call can take under 1 ms, and a ratio to 0 ms is undefined.
    plan = FaultPlan(script=("ok", "schema_invalid"), latency_ms=3)
    dataset = write_jsonl(tmp_path / "c.jsonl", FOUR)
    result = run_eval(tmp_path, dataset, "--compare", "2", "--concurrency", "1", plan=plan, capsys=capsys)
    assert result.code == 0 and result.report is not None
    assert [v["ref"] for v in result.report["versions"]] == ["skill_assessment@1", "skill_assessment@2"]
    assert list(result.cases(1)) == list(result.cases(2)) == ["a", "b", "c", "d"]
    assert result.report["versions"][1]["params"]["max_tokens"] == 600  # v2's own output budget
    v1, v2 = result.summary(1), result.summary(2)
    assert (v1["validity_rate"], v2["validity_rate"]) == (1.0, 0.75)
    comparison = result.report["comparison"]
    assert (comparison["base"], comparison["candidate"]) == (1, 2)
    assert comparison["validity_points"] == pytest.approx(-25.0)
    assert comparison["mean_cost_ratio"] == pytest.approx(v2["mean_cost_micros"] / v1["mean_cost_micros"])
    assert comparison["latency_p95_ratio"] == pytest.approx(v2["latency_p95_ms"] / v1["latency_p95_ms"])
    assert comparison["keyword_coverage_points"] == pytest.approx(
        (v2["keyword_coverage"] - v1["keyword_coverage"]) * 100
    )
    [diff] = comparison["valid_in_one_only"]
    assert (diff["id"], diff["line"], diff["v1"], diff["v2"]) == ("a", 1, "valid", "invalid")
    assert "v2 vs v1" in result.out and "-25.0 pts" in result.out
    assert "Valid in one version only:\n  a (line 1): v1 valid, v2 invalid:" in result.out
    assert result.report["spend"]["model_calls"] == 8


# --- bad input ---------------------------------------------------------------------------------


def test_bad_lines_are_reported_by_number_and_the_rest_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given a dataset with a line that is not JSON, one without variables, one whose variables the
    template refuses, a blank line, one with a misspelt field and one reusing an id, then each is
    reported with its line number and the good cases still run (exit 0)."""
    dataset = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            case("ok-1", "Left rows and NULLs."),
            '{"id": "broken", "variables": ',
            {"id": "novars", "expected_keywords": []},
            {"id": "noanswer", "variables": {"skill": "SQL", "question": "Why?"}, "expected_keywords": []},
            "",
            {"variables": FOUR[0]["variables"], "expected_keywords": ["NULL"]},  # id: its line number
            {**case("typo", "x"), "expected_keyword": ["NULL"]},
            case("ok-1", "Again."),
        ],
    )
    result = run_eval(tmp_path, dataset, capsys=capsys)
    assert result.code == 0 and result.report is not None
    err = result.err
    assert f"{dataset} line 2: not JSON: Expecting value (column 31)" in err
    assert f"{dataset} line 3: no 'variables' object" in err
    assert f"{dataset} line 4: v1: variable 'answer' is required by skill_assessment@1" in err
    assert f"{dataset} line 7: unknown field 'expected_keyword' (a case has: id, variables, expected_keywords" in err
    assert f"{dataset} line 8: id 'ok-1' is already used on line 1" in err
    assert [e["line"] for e in result.report["dataset"]["bad_lines"]] == [2, 3, 7, 8]
    cases = result.cases()
    assert list(cases) == ["ok-1", "noanswer", "6"]
    assert cases["noanswer"]["status"] == "bad_input" and cases["noanswer"]["attempts"] == 0
    summary = result.summary()
    assert (summary["cases"], summary["answered"], summary["input_errors"]) == (3, 2, 1)
    assert "(4 bad lines skipped)" in result.out


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "is empty: it needs one JSON case per line"),
        (["", "   "], "is empty"),
        (["[1, 2]", '{"variables": 3, "expected_keywords": []}'], "has no usable case (2 bad lines)"),
    ],
)
def test_a_dataset_without_usable_cases_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], message: str
) -> None:
    dataset = tmp_path / "empty.jsonl"
    dataset.write_text("\n".join(lines), encoding="utf-8")
    result = run_eval(tmp_path, dataset, capsys=capsys)
    assert result.code == 1 and result.report is None
    assert message in result.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--concurrency", "0"], "--concurrency must be between 1 and 32, got 0"),
        (["--min-validity", "90"], "--min-validity is a fraction from 0 to 1 (e.g. 0.9), got 90.0"),
        (["--compare", "1"], "--compare must name another version than --version (1)"),
        (["--compare", "9"], "template 'skill_assessment' has no version 9 (versions: 1, 2"),
        (["--retries", "9"], "--retries must be between 0 and 5, got 9"),
    ],
)
def test_usage_errors_exit_1_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    provider, llm = simulator()
    result = run_eval(tmp_path, write_jsonl(tmp_path / "c.jsonl", FOUR), *extra, llm=llm, capsys=capsys)
    assert result.code == 1 and result.report is None
    assert message in result.err
    assert provider.stats()["requests"] == 0


def test_argparse_errors_exit_1_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    """2 means "below --min-validity" to a CI job, so a malformed command line must not exit 2."""
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--template", "skill_assessment"])
    assert caught.value.code == 1
    assert "the following arguments are required: --dataset" in capsys.readouterr().err


def test_unreadable_dataset_and_unknown_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = run_eval(tmp_path, tmp_path / "nope.jsonl", capsys=capsys)
    assert missing.code == 1 and "cannot read" in missing.err and "nope.jsonl" in missing.err
    args = build_parser().parse_args(["eval", "--template", "no_such", "--dataset", str(SHIPPED)])
    assert eval_cli.run(args, llm=simulator()[1], env=ENV) == 1
    assert "template 'no_such' does not exist" in capsys.readouterr().err


# --- the report and the shipped example --------------------------------------------------------


def test_json_report_content(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given --json, then the file holds the dataset's identity, each version's model, parameters,
    summary and cases, and the spend; it is written atomically (no temp file left beside it)."""
    dataset = write_jsonl(tmp_path / "c.jsonl", [case("x", "NULLs on the right.", ["null"], locale="en-GB")])
    result = run_eval(tmp_path, dataset, capsys=capsys)
    report = result.report
    assert report is not None and result.code == 0
    assert report["report_version"] == 1 and report["template"] == "skill_assessment"
    assert report["dataset"] == {
        "path": str(dataset),
        "sha256": hashlib.sha256(dataset.read_bytes()).hexdigest(),
        "cases": 1,
        "bad_lines": [],
    }
    assert report["provider"] == "simulated" and report["comparison"] is None
    [version] = report["versions"]
    assert (version["version"], version["ref"], version["model"]) == (1, "skill_assessment@1", "gpt-4o-mini")
    assert version["params"] == {"max_tokens": 900, "temperature": 0.2, "top_p": 1.0}
    [item] = version["cases"]
    assert (item["id"], item["line"], item["locale"], item["finish_reason"]) == ("x", 1, "en-GB", "stop")
    assert set(item) >= {"latency_ms", "keywords_found", "keywords_missing", "coverage", "cost_usd", "answer"}
    assert report["spend"] == {
        "model_calls": 1,
        "cost_micros": item["cost_micros"],
        "cost_usd": item["cost_micros"] / 1_000_000,
        "billed": False,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "report.json"]
    assert f"wrote {tmp_path / 'report.json'}" in result.out


def test_shipped_example_through_main_and_the_configured_provider(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make eval`'s command, through `python -m cli`'s main and provider selection: with no key
    configured the in-process simulator answers, every shipped case is usable, and both versions
    are valid throughout."""
    for name in ("OPENAI_API_KEY", "OPENAI_SECRET_ARN", "SIMULATOR_URL", "SIM_FAULTS", "PROMPTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROVIDER", "simulated")
    argv = ["eval", "--template", "skill_assessment", "--version", "1", "--compare", "2", "--dataset", str(SHIPPED)]
    code = main([*argv, "--min-validity", "1.0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""  # no bad line in the shipped dataset
    cases = len(SHIPPED.read_text(encoding="utf-8").splitlines())
    assert 8 <= cases <= 12
    assert f"skill_assessment: {cases} cases from {SHIPPED}; provider simulated" in captured.out
    assert captured.out.count(f"{cases}/{cases} 100.0%") == 2
