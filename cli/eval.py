"""`python -m cli eval`: run a prompt template version over a JSONL dataset and measure it.

    python -m cli eval --template NAME [--version N] --dataset CASES.jsonl [--compare M]
                       [--concurrency 4] [--model-profile PROFILE] [--retries 2]
                       [--json OUT.json] [--min-validity 0.9]

Each dataset line is a JSON object:

    {"id": "case-1", "variables": {...}, "expected_keywords": ["NULL", "left table"], "locale": "en"}

`variables` and `expected_keywords` are required (the list may be empty); `id` defaults to the
line number; `locale` is carried into the report. A line that is not JSON, lacks a field, has an
unknown one, or whose variables the template refuses (the renderer's own message) is reported by
its line number and counted as an input error; the other lines still run.

Per case and version: whether the model's first answer validates against the template's output
schema (no repair attempt, unlike the gateway), the share of expected keywords found in the
answer (case-insensitively, in every string value of the JSON answer, or in the raw text of a
template without a schema), the provider call's latency, tokens, and cost at list price
(integer micro-USD, shown in USD). Provider errors are counted apart from invalid answers: the
validity rate is valid answers over answers received. With `--compare`, both versions run on the
same cases, interleaved so that a provider slowing down mid-run affects both alike, and the
report adds the deltas and the cases valid in one version only.

It calls the configured provider in-process (OpenAI when OPENAI_API_KEY or OPENAI_SECRET_ARN is
set, else the simulated provider), with the model and parameters the gateway would send first.
It measures the template and the model, not the gateway: no cache, no fallback models, no
tenant budget or ledger. Calls to OpenAI are billed to that key; the spend is printed at the end.

Exit status: 0 done; 2 a version's validity rate is below `--min-validity` (for CI); 1 usage,
configuration or dataset error (nothing usable to run); 130 interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from aigateway.completion import ModelCall, json_output
from aigateway.errors import GatewayError, InvalidModelOutput, TemplateError
from aigateway.generation import model_calls, response_format_of
from aigateway.governance.pricing import MICROS_PER_USD, cost_micros, micros_to_usd, price_for
from aigateway.llm import tokens
from aigateway.llm.catalog import PROFILES, get_profile
from aigateway.llm.client import ProviderConfig, ProviderReply, chat_completion, provider_client
from aigateway.prompts.registry import PromptTemplate, get_registry
from aigateway.prompts.render import render_messages
from aigateway.resilience.backoff import Backoff
from aigateway.resilience.policy import policy_for
from aigateway.settings import Settings
from cli.common import atomic_file, read_utf8

if TYPE_CHECKING:
    from openai import OpenAI

EXIT_OK, EXIT_ERROR, EXIT_BELOW_MIN, EXIT_INTERRUPTED = 0, 1, 2, 130
REPORT_VERSION = 1
MAX_CONCURRENCY = 32
MAX_RETRIES = 5
MAX_RETRY_WAIT_S = 30.0  # a Retry-After longer than this is not worth holding an evaluation for
MAX_ID = 100
MAX_LOCALE = 35  # the longest BCP 47 tag worth supporting
LINE_FIELDS = ("id", "variables", "expected_keywords", "locale")
# Settings insists on the tables every Lambda function uses; this command never touches them.
UNUSED_TABLES = dict.fromkeys(("CACHE_TABLE", "LEDGER_TABLE", "STATE_TABLE"), "unused-by-cli-eval")

ANSWERED = ("valid", "invalid", "filtered", "answered")  # the provider answered (and billed)

Llm = tuple[ProviderConfig, "OpenAI"]


class UsageError(Exception):
    """The arguments, the configuration or the dataset as a whole cannot be used (exit 1)."""


# --- arguments ---------------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="measure a prompt template version over a JSONL dataset (validity, keywords, latency, cost)",
        description=(
            "Runs a template version over a JSONL dataset against the configured model provider "
            "(OpenAI when OPENAI_API_KEY or OPENAI_SECRET_ARN is set, else the simulated provider), "
            "in-process. It measures the template and the model, not the gateway: no cache, no fallback "
            "models, no repair, and no tenant budget or ledger is touched. OpenAI calls are billed to that "
            "key; the spend is printed at the end. Exit 0; 2 when a version is below --min-validity; "
            "1 on usage or dataset errors."
        ),
    )
    parser.add_argument("--template", required=True, help="template name, e.g. skill_assessment")
    parser.add_argument("--version", type=int, help="template version (default: the latest)")
    parser.add_argument("--dataset", type=Path, required=True, metavar="CASES.jsonl", help="one case per line")
    parser.add_argument("--compare", type=int, metavar="VERSION", help="a second version to run on the same cases")
    parser.add_argument("--concurrency", type=int, default=4, help=f"model calls at once (1-{MAX_CONCURRENCY})")
    parser.add_argument(
        "--model-profile",
        choices=sorted(PROFILES),
        help="use this profile's model and parameters instead of the template's",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help=f"retries of a transient provider error (429, 5xx, timeout) per case (0-{MAX_RETRIES})",
    )
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the full report here (atomically)")
    parser.add_argument(
        "--min-validity",
        type=float,
        metavar="RATE",
        help="exit 2 if a version's schema-validity rate is below RATE (a fraction, e.g. 0.9)",
    )
    # argparse exits 2 on a usage error, the status reserved here for --min-validity (CI gating).
    parser.error = _usage_exit(parser)
    parser.set_defaults(run=run)


def _usage_exit(parser: argparse.ArgumentParser) -> Callable[[str], NoReturn]:
    def error(message: str) -> NoReturn:
        parser.print_usage(sys.stderr)
        parser.exit(EXIT_ERROR, f"{parser.prog}: error: {message}\n")

    return error


def check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {args.concurrency}")
    if not 0 <= args.retries <= MAX_RETRIES:
        raise UsageError(f"--retries must be between 0 and {MAX_RETRIES}, got {args.retries}")
    if args.min_validity is not None and not 0.0 <= args.min_validity <= 1.0:
        raise UsageError(f"--min-validity is a fraction from 0 to 1 (e.g. 0.9), got {args.min_validity}")
    if args.compare is not None and args.version is not None and args.compare == args.version:
        raise UsageError(f"--compare must name another version than --version ({args.version})")


# --- the dataset -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    line: int
    id: str
    variables: dict[str, Any]
    expected_keywords: tuple[str, ...]
    locale: str | None = None


@dataclass(frozen=True)
class LineError:
    line: int
    message: str


@dataclass(frozen=True)
class Dataset:
    path: Path
    sha256: str
    cases: list[Case]
    errors: list[LineError]


class LineProblem(Exception):
    pass


def read_dataset(path: Path) -> Dataset:
    """The cases of a JSONL file, and its bad lines by number; UsageError when nothing is usable."""
    try:
        raw, text = read_utf8(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cases: list[Case] = []
    errors: list[LineError] = []
    first_line: dict[str, int] = {}
    # "\n" only: str.splitlines would also split at U+2028 and friends, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            case = parse_line(number, line)
            if case.id in first_line:
                raise LineProblem(f"id {case.id!r} is already used on line {first_line[case.id]}")
        except LineProblem as exc:
            errors.append(LineError(number, str(exc)))
            continue
        first_line[case.id] = number
        cases.append(case)
    if not cases and not errors:
        raise UsageError(f"{path} is empty: it needs one JSON case per line")
    return Dataset(path, hashlib.sha256(raw).hexdigest(), cases, errors)


def parse_line(number: int, line: str) -> Case:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LineProblem(f"not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise LineProblem(f"a case must be a JSON object, got {_json_type(data)}")
    unknown = sorted(set(data) - set(LINE_FIELDS))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise LineProblem(f"unknown field {names} (a case has: {', '.join(LINE_FIELDS)})")
    if "variables" not in data:
        raise LineProblem("no 'variables' object")
    variables = data["variables"]
    if not isinstance(variables, dict):
        raise LineProblem(f"'variables' must be an object, got {_json_type(variables)}")
    if "expected_keywords" not in data:
        raise LineProblem("no 'expected_keywords' list (use [] to check validity only)")
    keywords = data["expected_keywords"]
    if not isinstance(keywords, list):
        raise LineProblem(f"'expected_keywords' must be a list of strings, got {_json_type(keywords)}")
    for index, keyword in enumerate(keywords):
        if not isinstance(keyword, str) or not keyword.strip():
            raise LineProblem(f"expected_keywords[{index}] must be a non-empty string, got {keyword!r}")
    case_id = data.get("id", number)
    if isinstance(case_id, bool) or not isinstance(case_id, str | int):
        raise LineProblem(f"'id' must be a string or a number, got {_json_type(case_id)}")
    case_id = str(case_id).strip()
    if not 1 <= len(case_id) <= MAX_ID:
        raise LineProblem(f"'id' must be 1-{MAX_ID} characters")
    locale = data.get("locale")
    if locale is not None and (not isinstance(locale, str) or not 1 <= len(locale) <= MAX_LOCALE):
        raise LineProblem(f"'locale' must be a language tag such as 'en' or 'pt-BR', got {locale!r}")
    return Case(number, case_id, variables, tuple(keywords), locale)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# --- one case ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One template version and the first call the gateway would make for it."""

    template: PromptTemplate
    call: ModelCall
    response_format: dict[str, Any] | None

    @property
    def version(self) -> int:
        return self.template.version


@dataclass
class Outcome:
    """One case on one version. `status`: valid | invalid (not the schema) | filtered (the provider's
    content filter withheld it) | answered (template without a schema) | provider_error | bad_input."""

    version: int
    id: str
    line: int
    status: str
    locale: str | None = None
    error: str | None = None  # provider_error / bad_input / invalid / filtered: why
    model: str | None = None
    provider: str | None = None
    finish_reason: str | None = None
    attempts: int = 0
    latency_ms: int | None = None
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    keywords_found: list[str] = field(default_factory=list)
    keywords_missing: list[str] = field(default_factory=list)
    coverage: float | None = None
    answer: Any = None

    @property
    def answered(self) -> bool:
        return self.status in ANSWERED


def answer_text(value: Any) -> str:
    """What keywords are looked for in: every string value of a JSON answer (not its keys, which
    the schema fixes), or the text itself."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(answer_text(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(answer_text(v) for v in value)
    return ""


def keyword_coverage(keywords: Sequence[str], text: str) -> tuple[list[str], list[str]]:
    """(found, missing): case-insensitive substring matches, whitespace runs counted as one space so
    a keyword still matches across a line break."""
    haystack = " ".join(text.split()).casefold()
    found = [k for k in keywords if " ".join(k.split()).casefold() in haystack]
    return found, [k for k in keywords if k not in found]


def evaluate(
    target: Target,
    case: Case,
    llm: Llm,
    *,
    timeout_s: float,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
    backoff: Backoff | None = None,
) -> Outcome:
    """One case on one version: render, call (retrying only transient provider errors), judge."""
    outcome = Outcome(target.version, case.id, case.line, "bad_input", case.locale, model=target.call.model)
    try:
        messages = render_messages(target.template, case.variables)
    except (GatewayError, TemplateError) as exc:
        outcome.error = exc.message if isinstance(exc, GatewayError) else str(exc)
        return outcome
    config, client = llm
    backoff = backoff or Backoff()
    reply: ProviderReply | None = None
    while reply is None:
        outcome.attempts += 1
        try:
            reply = chat_completion(
                client,
                model=target.call.model,
                messages=messages,
                params=target.call.params,
                response_format=target.response_format,
                timeout_s=timeout_s,
            )
        except GatewayError as exc:
            if outcome.attempts > retries or not policy_for(exc).retryable:
                outcome.status, outcome.error = "provider_error", f"{exc.code}: {exc.message}"
                return outcome
            wait = backoff.delay(outcome.attempts - 1, retry_after_s=getattr(exc, "retry_after_s", None))
            sleep(min(wait, MAX_RETRY_WAIT_S))
    outcome.provider = "simulated" if reply.simulated else config.name
    outcome.finish_reason = reply.finish_reason
    outcome.latency_ms = reply.latency_ms
    outcome.input_tokens, outcome.cached_tokens = reply.input_tokens, reply.cached_tokens
    outcome.output_tokens = reply.output_tokens
    # Priced as the gateway prices a call: the model asked for (a provider may answer with a dated
    # snapshot name), at the price in force now.
    outcome.cost_micros = cost_micros(
        price_for(target.call.model, datetime.now(UTC)),
        input_tokens=reply.input_tokens,
        cached_tokens=reply.cached_tokens,
        output_tokens=reply.output_tokens,
    )
    outcome.status, outcome.answer, outcome.error = judge(target.template, reply)
    text = answer_text(_keyword_source(outcome.answer)) if target.template.output_model else reply.content
    found, missing = keyword_coverage(case.expected_keywords, text)
    outcome.keywords_found, outcome.keywords_missing = found, missing
    outcome.coverage = len(found) / len(case.expected_keywords) if case.expected_keywords else None
    return outcome


def judge(template: PromptTemplate, reply: ProviderReply) -> tuple[str, Any, str | None]:
    """(status, answer, why not valid) with the gateway's own validator (aigateway.completion.json_output):
    the first answer as it came, no repair attempt."""
    if reply.finish_reason == "content_filter":
        return "filtered", reply.content, "the provider's content filter withheld the answer"
    if template.output_model is None:
        return "answered", reply.content, None
    try:
        return "valid", json_output(template.output_model)(reply.content), None
    except InvalidModelOutput as exc:
        truncated = " (the answer was cut off at max_tokens)" if reply.finish_reason == "length" else ""
        return "invalid", reply.content, f"{exc.problems}{truncated}"


def _keyword_source(answer: Any) -> Any:
    """An invalid answer is still searched value by value when it is JSON at all."""
    if isinstance(answer, str):
        try:
            return json.loads(answer)
        except ValueError:
            return answer
    return answer


# --- the run -----------------------------------------------------------------------------------


def run(
    args: argparse.Namespace,
    *,
    llm: Llm | None = None,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """`llm` and `env` are for tests: a client on an in-process simulated provider, an environment."""
    try:
        check_args(args)
        settings = Settings.model_validate({**UNUSED_TABLES, **(os.environ if env is None else env)})
        targets = resolve_targets(args, settings)
        dataset = read_dataset(args.dataset)
        llm = llm or configured_provider(settings)
    except ValidationError as exc:
        print(f"error: invalid environment: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (UsageError, GatewayError, TemplateError) as exc:
        print(f"error: {exc.message if isinstance(exc, GatewayError) else exc}", file=sys.stderr)
        return EXIT_ERROR
    for problem in dataset.errors:
        print(f"{dataset.path} line {problem.line}: {problem.message}", file=sys.stderr)
    if not dataset.cases:
        print(f"error: {dataset.path} has no usable case ({len(dataset.errors)} bad lines)", file=sys.stderr)
        return EXIT_ERROR

    # One-off costs that would otherwise be timed as the first cases' latency: the SDK imports its
    # resources on first use (~0.4 s), and the in-process simulator loads its tokenizers (~0.1 s).
    _ = llm[1].chat.completions
    if llm[0].name == "simulated":
        for target in targets:
            tokens.count_text("warm-up", target.call.model)
    started = datetime.now(UTC)
    try:
        outcomes = run_cases(targets, dataset.cases, llm, args, settings.openai_timeout_s, sleep)
    except KeyboardInterrupt:
        print("\ninterrupted: no report written", file=sys.stderr)
        return EXIT_INTERRUPTED
    for outcome in outcomes:
        if outcome.status == "bad_input":
            print(f"{dataset.path} line {outcome.line}: v{outcome.version}: {outcome.error}", file=sys.stderr)

    report = build_report(targets, dataset, outcomes, llm[0], started)
    print(render(report))
    if args.json is not None:
        try:
            with atomic_file(args.json, "w", encoding="utf-8") as handle:
                json.dump(report, handle, ensure_ascii=False, indent=2)
                handle.write("\n")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"wrote {args.json}")
    return gate(report, args.min_validity)


def configured_provider(settings: Settings) -> Llm:
    """The gateway's own provider selection; a key kept in Secrets Manager is read with the caller's
    AWS credentials, and failing to read it is a configuration error, not a crash."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return provider_client(settings)
    except (BotoCoreError, ClientError) as exc:
        raise UsageError(f"cannot read the OpenAI key from OPENAI_SECRET_ARN: {exc}") from None


def resolve_targets(args: argparse.Namespace, settings: Settings) -> list[Target]:
    registry = get_registry(settings.prompts_dir)
    base = registry.get(args.template, args.version)
    versions = [base.version] if args.compare is None else [base.version, args.compare]
    if len(set(versions)) != len(versions):
        raise UsageError(f"--compare must name another version than {base.ref}")
    profile = get_profile(args.model_profile) if args.model_profile else None
    targets: list[Target] = []
    for version in versions:
        template = registry.get(args.template, version)
        if args.min_validity is not None and template.output_model is None:
            raise UsageError(f"{template.ref} has no output_schema, so --min-validity cannot apply")
        chosen = profile or get_profile(template.model_profile)
        # The chain's first hop: what the gateway sends before any fallback model.
        call = model_calls(template, chosen, template.max_tokens, caller_chose=profile is not None)[0]
        price_for(call.model, datetime.now(UTC))  # an unpriced model stops here, before anything is spent
        targets.append(Target(template, call, response_format_of(template)))
    return targets


def run_cases(
    targets: Sequence[Target],
    cases: Sequence[Case],
    llm: Llm,
    args: argparse.Namespace,
    timeout_s: float,
    sleep: Callable[[float], None],
) -> list[Outcome]:
    """Every (case, version) pair, interleaved case by case: a provider that slows down or starts
    refusing during the run then hurts both versions alike, not the one that happened to run last."""
    pairs = [(target, case) for case in cases for target in targets]
    progress = sys.stderr.isatty()
    results: dict[int, Outcome] = {}
    pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="eval")
    try:
        futures: dict[Future[Outcome], int] = {
            pool.submit(evaluate, t, c, llm, timeout_s=timeout_s, retries=args.retries, sleep=sleep): i
            for i, (t, c) in enumerate(pairs)
        }
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if progress:
                print(f"\r{done}/{len(pairs)} model calls", end="", file=sys.stderr, flush=True)
    finally:
        if progress:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        pool.shutdown(wait=True, cancel_futures=True)  # on ^C: the calls in flight finish, no new ones
    return [results[i] for i in range(len(pairs))]


# --- the report --------------------------------------------------------------------------------


def percentile(values: Sequence[int], q: float) -> int | None:
    """Nearest-rank percentile: always a latency that was observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(target: Target, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    answered = [o for o in outcomes if o.answered]
    valid = sum(o.status == "valid" for o in outcomes)
    covered = [o.coverage for o in answered if o.coverage is not None]
    latencies = [o.latency_ms for o in answered if o.latency_ms is not None]
    cost = sum(o.cost_micros for o in outcomes)
    has_schema = target.template.output_model is not None
    return {
        "cases": len(outcomes),
        "answered": len(answered),
        "valid": valid if has_schema else None,
        "invalid": sum(o.status in ("invalid", "filtered") for o in outcomes) if has_schema else None,
        # Over the answers received: a provider outage says nothing about the template.
        "validity_rate": valid / len(answered) if has_schema and answered else None,
        # Over the answered cases that list keywords.
        "keyword_coverage": sum(covered) / len(covered) if covered else None,
        "latency_p50_ms": percentile(latencies, 0.50),
        "latency_p95_ms": percentile(latencies, 0.95),
        "input_tokens": sum(o.input_tokens for o in outcomes),
        "output_tokens": sum(o.output_tokens for o in outcomes),
        "cost_micros": cost,
        "cost_usd": _usd(cost),
        "mean_cost_micros": cost / len(answered) if answered else None,
        "provider_errors": sum(o.status == "provider_error" for o in outcomes),
        "input_errors": sum(o.status == "bad_input" for o in outcomes),
        "attempts": sum(o.attempts for o in outcomes),
    }


def _ratio(new: float | None, old: float | None) -> float | None:
    return new / old if new is not None and old else None


def _points(new: float | None, old: float | None) -> float | None:
    return (new - old) * 100 if new is not None and old is not None else None


def compare(base: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Candidate against base: points for rates, ratios for latency and cost (<1 is cheaper/faster),
    and the cases where exactly one of the two gave a valid answer."""
    a, b = base["summary"], candidate["summary"]
    by_id = {o["id"]: o for o in base["cases"]}
    differences = []
    for other in candidate["cases"]:
        mine = by_id[other["id"]]
        if (mine["status"] == "valid") != (other["status"] == "valid"):
            differences.append(
                {
                    "id": other["id"],
                    "line": other["line"],
                    f"v{base['version']}": mine["status"],
                    f"v{candidate['version']}": other["status"],
                    "why": other["error"] if mine["status"] == "valid" else mine["error"],
                }
            )
    return {
        "base": base["version"],
        "candidate": candidate["version"],
        "validity_points": _points(b["validity_rate"], a["validity_rate"]),
        "keyword_coverage_points": _points(b["keyword_coverage"], a["keyword_coverage"]),
        "latency_p50_ratio": _ratio(b["latency_p50_ms"], a["latency_p50_ms"]),
        "latency_p95_ratio": _ratio(b["latency_p95_ms"], a["latency_p95_ms"]),
        "mean_cost_ratio": _ratio(b["mean_cost_micros"], a["mean_cost_micros"]),
        "valid_in_one_only": differences,
    }


def build_report(
    targets: Sequence[Target],
    dataset: Dataset,
    outcomes: Sequence[Outcome],
    config: ProviderConfig,
    started: datetime,
) -> dict[str, Any]:
    versions = []
    for target in targets:
        mine = [o for o in outcomes if o.version == target.version]
        versions.append(
            {
                "version": target.version,
                "ref": target.template.ref,
                "model": target.call.model,
                "params": target.call.params,
                "summary": summarize(target, mine),
                "cases": [{**asdict(o), "cost_usd": _usd(o.cost_micros)} for o in mine],
            }
        )
    spent = sum(o.cost_micros for o in outcomes)
    # By what answered, not by configuration alone: an "openai" base_url may point at the simulator.
    billed = any(o.provider not in (None, "simulated") for o in outcomes)
    answered_by_simulator = any(o.provider == "simulated" for o in outcomes)
    return {
        "report_version": REPORT_VERSION,
        "template": targets[0].template.name,
        "dataset": {
            "path": str(dataset.path),
            "sha256": dataset.sha256,
            "cases": len(dataset.cases),
            "bad_lines": [asdict(e) for e in dataset.errors],
        },
        "provider": "simulated" if answered_by_simulator and not billed else config.name,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions,
        "comparison": compare(versions[0], versions[1]) if len(versions) == 2 else None,
        "spend": {
            "model_calls": sum(o.attempts for o in outcomes),
            "cost_micros": spent,
            "cost_usd": _usd(spent),
            # The simulated provider bills nothing; its cost is what the tokens would cost at list price.
            "billed": billed,
        },
    }


def gate(report: dict[str, Any], min_validity: float | None) -> int:
    if min_validity is None:
        return EXIT_OK
    below = False
    for version in report["versions"]:
        rate = version["summary"]["validity_rate"]
        if rate is None or rate < min_validity:
            shown = "n/a (no answers)" if rate is None else f"{rate:.1%}"
            print(f"FAIL: {version['ref']} schema validity {shown} is below --min-validity {min_validity:.1%}")
            below = True
    return EXIT_BELOW_MIN if below else EXIT_OK


# --- the text rendering ------------------------------------------------------------------------


def _usd(micros: float) -> float:
    return float(micros_to_usd(micros)) if isinstance(micros, int) else micros / MICROS_PER_USD


def _money(micros: float | None) -> str:
    return "-" if micros is None else f"${_usd(micros):.6f}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _signed(points: float | None) -> str:
    return "-" if points is None else f"{points:+.1f} pts"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"×{ratio:.2f}"


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value:,} ms"


def table(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; `right` lists the right-aligned ones (numbers)."""
    aligned = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in aligned else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _case_cells(case: dict[str, Any]) -> list[str]:
    if case["status"] not in ANSWERED:
        return [case["status"], "-", "-", "-", "-"]
    keywords = len(case["keywords_found"]) + len(case["keywords_missing"])
    found = f"{len(case['keywords_found'])}/{keywords}" if keywords else "-"
    tokens = f"{case['input_tokens']}/{case['output_tokens']}"
    return [case["status"], found, _ms(case["latency_ms"]), tokens, _money(case["cost_micros"])]


def _summary_rows(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    def validity(s: dict[str, Any]) -> str:
        return "-" if s["valid"] is None else f"{s['valid']}/{s['answered']} {_pct(s['validity_rate'])}"

    return [
        ("cases", [str(s["cases"]) for s in summaries]),
        ("schema-valid", [validity(s) for s in summaries]),
        ("keyword coverage", [_pct(s["keyword_coverage"]) for s in summaries]),
        ("latency p50 / p95", [f"{_ms(s['latency_p50_ms'])} / {_ms(s['latency_p95_ms'])}" for s in summaries]),
        ("tokens in / out", [f"{s['input_tokens']:,} / {s['output_tokens']:,}" for s in summaries]),
        ("cost total", [_money(s["cost_micros"]) for s in summaries]),
        ("cost per answer", [_money(s["mean_cost_micros"]) for s in summaries]),
        ("provider errors", [str(s["provider_errors"]) for s in summaries]),
        ("input errors", [str(s["input_errors"]) for s in summaries]),
    ]


def _deltas(comparison: dict[str, Any]) -> dict[str, str]:
    return {
        "schema-valid": _signed(comparison["validity_points"]),
        "keyword coverage": _signed(comparison["keyword_coverage_points"]),
        "latency p50 / p95": f"{_times(comparison['latency_p50_ratio'])} / {_times(comparison['latency_p95_ratio'])}",
        "cost per answer": _times(comparison["mean_cost_ratio"]),
    }


def render(report: dict[str, Any]) -> str:
    """The human report: one row per case, a summary per version (with deltas), then what went wrong."""
    versions = report["versions"]
    names = [f"v{v['version']}" for v in versions]
    dataset = report["dataset"]
    skipped = f" ({len(dataset['bad_lines'])} bad lines skipped)" if dataset["bad_lines"] else ""
    models = ", ".join(f"{name} on {v['model']}" for name, v in zip(names, versions, strict=True))
    out = [
        f"{report['template']}: {dataset['cases']} cases from {dataset['path']}{skipped}; "
        f"provider {report['provider']}; {models}"
    ]
    if report["provider"] == "simulated":
        out.append("Simulated answers: the figures exercise the pipeline; they say nothing about a real model.")

    header = ["case", "line"]
    for name in names:
        header += [name, "keywords", "latency", "tokens in/out", "cost"]
    rows = [header]
    for index, case in enumerate(versions[0]["cases"]):
        row = [case["id"], str(case["line"])]
        for version in versions:
            row += _case_cells(version["cases"][index])
        rows.append(row)
    numeric = {1} | {2 + 5 * i + k for i in range(len(versions)) for k in (1, 2, 3, 4)}
    out += ["", table(rows, numeric)]

    comparison = report["comparison"]
    deltas = _deltas(comparison) if comparison else {}
    summary_rows = [["", *names]]
    if comparison:
        summary_rows[0].append(f"v{comparison['candidate']} vs v{comparison['base']}")
    for label, cells in _summary_rows([v["summary"] for v in versions]):
        summary_rows.append([label, *cells, *([deltas.get(label, "")] if comparison else [])])
    out += ["", table(summary_rows)]

    if comparison and comparison["valid_in_one_only"]:
        out += ["", "Valid in one version only:"]
        for diff in comparison["valid_in_one_only"]:
            statuses = ", ".join(f"{name} {diff[name]}" for name in names)
            out.append(f"  {diff['id']} (line {diff['line']}): {statuses}: {_clip(diff['why'])}")
    problems = [(name, c) for name, v in zip(names, versions, strict=True) for c in v["cases"] if c["error"]]
    if problems:
        out += ["", "Problems:"]
        out += [f"  {name} {c['id']} (line {c['line']}): {c['status']}: {_clip(c['error'])}" for name, c in problems]

    spend = report["spend"]
    calls = f"{spend['model_calls']} model call{'s' if spend['model_calls'] != 1 else ''}"
    if spend["billed"]:
        charged = f"Spent ${spend['cost_usd']:.6f} at list prices on {calls} to {report['provider']}"
        out += ["", f"{charged} (no tenant budget or ledger was charged)."]
    else:
        out += ["", f"Spent nothing: {calls} to the simulated provider (${spend['cost_usd']:.6f} at list prices)."]
    return "\n".join(out)


def _clip(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
