"""`python -m cli score`: score a CSV of sales leads through the API, resumably.

    python -m cli score INPUT.csv [--out RESULTS.csv] [--chunk 200] [--poll-interval 1.0]
                        [--timeout 1800] [--restart] [--base-url URL] [--api-key KEY] [--no-progress]

Reads the CSV (header row; `lead_id` or `id`; company, title, industry, size, source, notes;
contact_name/_email/_phone; events as `type` or `type@ISO-date` items separated by `;`; any other
column becomes a custom field), checks each row as the API would and reports a bad one by its line
in the file. The good rows are upserted (`POST /v1/leads`, `--chunk` at a time), queued for scoring
(`POST /v1/leads/score` with an `Idempotency-Key` per chunk; a lead whose upsert answer names the
re-score `job_id` the API queued itself keeps that job instead), and their jobs polled
(`GET /v1/jobs/{id}`, a few at a time, backing off, honouring `Retry-After`) until each ends.
RESULTS.csv (default INPUT.scored.csv) gets one line per input row, in input order; the bad rows
also go to RESULTS.errors.csv. Both are written atomically.

Every step is recorded in RESULTS.csv.state.json (input SHA-256, chunks upserted and queued, a job
id per lead, finished results), so rerunning the same command after an interruption or error goes
on where it stopped: nothing is upserted or queued twice. The state file is deleted once the run
completes; it refuses another input unless `--restart`.

Exit status: 0 every row scored; 3 finished, but some rows were bad or some jobs failed; 2 usage
or input error; 1 API or network error (rerun to resume); 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import io
import json
import random
import re
import sys
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from aigateway.scoring.records import custom_name
from cli.common import (
    Api,
    ApiError,
    Opener,
    add_connection_args,
    atomic_file,
    connection_problem,
    failure,
    path_part,
    read_utf8,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_CHUNK = 200
MAX_CHUNK = 500  # leads per request, either endpoint
POLL_WORKERS = 4
MAX_POLL_INTERVAL_S = 15.0
MAX_ATTEMPTS = 6  # per request (429, 409 in progress, 502-504, network), then the run stops
STATE_VERSION = 1
TERMINAL = ("succeeded", "failed", "cancelled")

# As the API validates a lead (aigateway/scoring/models.py: LeadIn); tests/unit/test_cli_score.py
# checks the leads this builds against that model.
LEAD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
EVENT_AT = re.compile(r"^\d{4}-\d{2}-\d{2}")
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_TEXT, MAX_NOTES, MAX_EVENTS, MAX_CUSTOM, MAX_SIZE = 300, 4000, 200, 50, 10_000_000

TEXT_COLUMNS = ("company", "title", "industry", "source")
CONTACT_COLUMNS = {"contact_name": "name", "contact_email": "email", "contact_phone": "phone"}
RESULT_COLUMNS = (
    "line",
    "lead_id",
    "status",
    "score",
    "tier",
    "scorer",
    "model",
    "confidence",
    "top_factors",
    "job_id",
    "error",
)
ERROR_COLUMNS = ("line", "lead_id", "error")
REJECTED_FIELD = re.compile(r"^leads\.(\d+)(?:\.|$)")

T = TypeVar("T")
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


class InputError(Exception):
    """The input or the arguments cannot be used (exit 2)."""


class ProtocolError(Exception):
    """The API answered 2xx with a body this command does not understand."""


class PollTimeout(Exception):
    pass


RUN_ERRORS: tuple[type[Exception], ...] = (ApiError, ProtocolError, PollTimeout, *TRANSPORT_ERRORS)


@dataclass
class Row:
    line: int  # where the record starts in the file (the header is line 1)
    lead_id: str
    lead: dict[str, Any]
    error: str | None = None


@dataclass
class Input:
    sha256: str
    rows: list[Row]
    renamed: dict[str, str] = field(default_factory=dict)  # column → custom field name


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("score", help="score a CSV of sales leads (resumable)")
    parser.add_argument("input", type=Path, metavar="INPUT.csv")
    parser.add_argument("--out", type=Path, help="results CSV (default: INPUT.scored.csv beside the input)")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help=f"leads per request (1-{MAX_CHUNK})")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between job polls (grows)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the jobs to end")
    parser.add_argument("--restart", action="store_true", help="discard the state file of an earlier run")
    add_connection_args(parser)
    parser.set_defaults(run=run)


def default_out(source: Path) -> Path:
    return source.with_name(f"{source.stem}.scored.csv")


def state_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.state.json")


def errors_path(out: Path) -> Path:
    return out.with_suffix(".errors.csv")


def run(
    args: argparse.Namespace,
    *,
    opener: Opener | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    started = clock()
    problem = connection_problem(args)
    if problem is None and not 1 <= args.chunk <= MAX_CHUNK:
        problem = f"--chunk must be between 1 and {MAX_CHUNK}, got {args.chunk}"
    if problem is None and (args.poll_interval < 0 or args.timeout <= 0):
        problem = "--poll-interval must be >= 0 and --timeout > 0"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    out: Path = args.out or default_out(args.input)
    try:
        source = read_input(args.input)
        state = State.open(state_path(out), source.sha256, restart=args.restart)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for column, name in source.renamed.items():
        print(f"note: column {column!r} is sent as custom field {name!r}", file=sys.stderr)
    for row in source.rows:
        if row.error:
            print(f"line {row.line}: {row.error}", file=sys.stderr)
    api = Api(args.base_url, args.api_key) if opener is None else Api(args.base_url, args.api_key, opener)
    job = Scoring(api, state, source, args, sleep=sleep, clock=clock)
    try:
        job.run()
        rows = result_rows(source, state)
        write_csv(out, RESULT_COLUMNS, rows)
        bad = [{k: r[k] for k in ERROR_COLUMNS} for r in rows if r["status"] == "invalid"]
        if bad:
            write_csv(errors_path(out), ERROR_COLUMNS, bad)
        else:
            errors_path(out).unlink(missing_ok=True)  # a stale one from an earlier input
    except RUN_ERRORS as exc:
        print(
            f"error: {exc}" if isinstance(exc, ProtocolError | PollTimeout) else failure(exc, args.base_url),
            file=sys.stderr,
        )
        unknown = exc.details.get("unknown_ids") if isinstance(exc, ApiError) else None
        if isinstance(unknown, list):
            print(f"unknown lead ids: {', '.join(map(str, unknown))}", file=sys.stderr)
        print(f"progress is saved in {state.path}: rerun the same command to resume", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\ninterrupted; progress is saved in {state.path}: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        job.close()
    state.path.unlink(missing_ok=True)
    print(f"wrote {out} ({len(rows)} row{'s' if len(rows) != 1 else ''})")
    if bad:
        print(f"wrote {errors_path(out)} ({len(bad)} bad row{'s' if len(bad) != 1 else ''})")
    print(summary(rows, clock() - started))
    complete = all(r["status"] == "succeeded" for r in rows)
    return EXIT_OK if complete else EXIT_INCOMPLETE


# --- the input ---------------------------------------------------------------------------------


def read_input(path: Path) -> Input:
    try:
        raw, text = read_utf8(path)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path} is empty; it needs a header row with a lead_id column")
        columns, renamed = plan_columns(header)
        rows: list[Row] = []
        first_line: dict[str, int] = {}
        end = reader.line_num
        for record in reader:
            line, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            row = parse_row(line, record, columns, len(header))
            if row.lead_id and row.lead_id in first_line:
                duplicate = f"duplicate lead_id {row.lead_id!r} (first on line {first_line[row.lead_id]})"
                row.error = f"{row.error}; {duplicate}" if row.error else duplicate
            elif row.lead_id:
                first_line[row.lead_id] = line
            rows.append(row)
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num}: not valid CSV: {exc}") from None
    if not rows:
        raise InputError(f"{path} has a header but no rows")
    return Input(hashlib.sha256(raw).hexdigest(), rows, renamed)


Column = tuple[str, str]  # (kind, name): lead_id | text | size | notes | events | contact | custom


def plan_columns(header: Sequence[str]) -> tuple[list[Column], dict[str, str]]:
    names = [name.strip() for name in header]
    lower = [name.lower() for name in names]
    seen = [name for name in lower if name]
    if len(set(seen)) != len(seen):
        twice = sorted({name for name in seen if seen.count(name) > 1})
        raise InputError(f"the header names a column twice: {', '.join(twice)}")
    id_column = "lead_id" if "lead_id" in lower else "id" if "id" in lower else None
    if id_column is None:
        raise InputError(f"no lead_id (or id) column; the header has: {', '.join(names) or '(nothing)'}")
    columns: list[Column] = []
    renamed: dict[str, str] = {}
    custom: dict[str, str] = {}
    for index, (name, key) in enumerate(zip(names, lower, strict=True)):
        if key == id_column:
            columns.append(("lead_id", "lead_id"))
        elif key in TEXT_COLUMNS or key in ("size", "notes", "events"):
            columns.append(("text" if key in TEXT_COLUMNS else key, key))
        elif key in CONTACT_COLUMNS:
            columns.append(("contact", CONTACT_COLUMNS[key]))
        else:
            field_name = custom_name(name, index)
            if field_name in custom:
                raise InputError(f"columns {custom[field_name]!r} and {name!r} are both custom field {field_name!r}")
            custom[field_name] = name
            if field_name != name:
                renamed[name or f"#{index + 1}"] = field_name
            columns.append(("custom", field_name))
    return columns, renamed


def parse_row(line: int, record: Sequence[str], columns: Sequence[Column], width: int) -> Row:
    problems: list[str] = []
    if len(record) > width:
        problems.append(f"{len(record)} fields, the header has {width}")
    lead: dict[str, Any] = {}
    contact: dict[str, str] = {}
    custom: dict[str, str] = {}
    lead_id = ""
    for (kind, name), cell in zip(columns, record, strict=False):
        value = cell.strip()
        if not value:
            continue
        if kind == "lead_id":
            lead_id = value
        elif kind == "text":
            lead[name] = value
            if len(value) > MAX_TEXT:
                problems.append(f"{name} is longer than {MAX_TEXT} characters")
        elif kind == "contact":
            contact[name] = value
            if len(value) > MAX_TEXT:
                problems.append(f"contact_{name} is longer than {MAX_TEXT} characters")
        elif kind == "size":
            lead["size"] = int(value) if re.fullmatch(r"-?\d+", value) else value  # as sent, were it valid
            if not (re.fullmatch(r"\d+", value) and int(value) <= MAX_SIZE):
                problems.append(f"size must be a whole number of employees from 0 to {MAX_SIZE:,}, got {value!r}")
        elif kind == "notes":
            lead["notes"] = value
            if len(value) > MAX_NOTES:
                problems.append(f"notes are {len(value)} characters, at most {MAX_NOTES}")
        elif kind == "events":
            events, problem = parse_events(value)
            lead["events"] = events
            if problem:
                problems.append(problem)
        else:
            custom[name] = value
    if not lead_id:
        problems.insert(0, "no lead_id")
    elif not LEAD_ID.fullmatch(lead_id):
        problems.insert(0, f"lead_id {lead_id!r} must be 1-64 letters, digits or . _ : -")
    if contact:
        lead["contact"] = contact
    if custom:
        lead["custom"] = custom
        if len(custom) > MAX_CUSTOM:
            problems.append(f"{len(custom)} custom fields, at most {MAX_CUSTOM}")
    return Row(line, lead_id, {"lead_id": lead_id, **lead}, "; ".join(problems) or None)


def parse_events(value: str) -> tuple[list[dict[str, str]], str | None]:
    """`type` or `type@ISO-date` items separated by `;`, and the first problem with them."""
    events: list[dict[str, str]] = []
    problems: list[str] = []
    for item in (part.strip() for part in value.split(";")):
        if not item:
            continue
        kind, at_sign, at = (part.strip() for part in item.partition("@"))
        events.append({"type": kind, "at": at} if at_sign else {"type": kind})
        if not EVENT_TYPE.fullmatch(kind):
            problems.append(f"event {item!r}: the type must be lower-case letters, digits and _ (e.g. demo_request)")
        elif at_sign and not (EVENT_AT.match(at) and _iso(at)):
            problems.append(f"event {item!r}: {at!r} is not an ISO-8601 date (YYYY-MM-DD[THH:MM...])")
    if len(events) > MAX_EVENTS:
        problems.append(f"{len(events)} events, at most {MAX_EVENTS}")
    return events, problems[0] if problems else None


def _iso(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


# --- the state file ----------------------------------------------------------------------------


@dataclass
class State:
    """What has been done for one input, saved atomically after every step."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def open(cls, path: Path, sha256: str, *, restart: bool) -> State:
        fresh = {
            "version": STATE_VERSION,
            "input_sha256": sha256,
            "upsert_chunks": None,  # [[line, ...], ...], fixed when the upserts start
            "upserted": [],  # indexes of upsert_chunks done
            "rejected": {},  # line → the API's reason (422 on upsert)
            "queue_chunks": None,  # [[lead_id, ...], ...], fixed when the queueing starts
            "queued": [],  # indexes of queue_chunks done
            "jobs": {},  # lead_id → job_id
            "results": {},  # lead_id → its results columns, once its job has ended
        }
        if restart or not path.exists():
            return cls(path, fresh)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the state file {path} ({exc}); rerun with --restart to start over") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InputError(f"{path} is not a state file of this version; rerun with --restart to start over")
        if data.get("input_sha256") != sha256:
            raise InputError(
                f"{path} belongs to another input (sha256 {str(data.get('input_sha256'))[:12]}…, this file "
                f"{sha256[:12]}…); rerun with --restart to discard it and start over"
            )
        return cls(path, {**fresh, **data})

    def save(self) -> None:
        with atomic_file(self.path, "w", encoding="utf-8") as handle:
            json.dump(self.data, handle, separators=(",", ":"))


# --- the run -----------------------------------------------------------------------------------


class Scoring:
    """Upsert, queue, poll: each step skipped for what the state says is done."""

    def __init__(
        self,
        api: Api,
        state: State,
        source: Input,
        args: argparse.Namespace,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ):
        self.api = api
        self.state = state
        self.source = source
        self.chunk: int = args.chunk
        self.poll_interval: float = args.poll_interval
        self.timeout: float = args.timeout
        self.no_progress: bool = args.no_progress
        self.sleep = sleep
        self.clock = clock
        self.bar: Any = None
        self._hold_until = 0.0  # no polls before this clock time (a 429's Retry-After)
        self._lock = threading.Lock()

    def run(self) -> None:
        self.upsert()
        self.queue()
        self.poll()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def phase(self, name: str, total: int, done: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="leads", disable=self.no_progress, file=sys.stderr)
        self.bar.reset(total=total)
        self.bar.set_description(name)
        self.bar.update(done)

    def save(self) -> None:
        self.state.save()

    # upsert

    def upsert(self) -> None:
        data = self.state.data
        good = [row for row in self.source.rows if row.error is None]
        if data["upsert_chunks"] is None:
            data["upsert_chunks"] = chunks([row.line for row in good], self.chunk)
            self.save()
        by_line = {row.line: row for row in good}
        plan: list[list[int]] = data["upsert_chunks"]
        self.phase("upsert", len(good), sum(len(plan[i]) for i in data["upserted"]))
        for index, planned in enumerate(plan):
            if index in data["upserted"]:
                continue
            lines = [line for line in planned if str(line) not in data["rejected"]]
            while lines:
                try:
                    reply = self.call("POST", "/v1/leads", body=leads_body(by_line, lines))
                except ApiError as exc:
                    at = rejected_index(exc, len(lines))
                    if at is None:
                        raise
                    line = lines.pop(at)
                    reason = f"rejected by the API: {exc.message}" + (f" ({exc.field})" if exc.field else "")
                    data["rejected"][str(line)] = reason
                    print(f"line {line}: {reason}", file=sys.stderr)
                    self.save()
                    continue
                for item in expect(reply, "items", list):
                    job_id = item.get("job_id") if isinstance(item, dict) else None
                    if isinstance(job_id, str) and job_id:  # the API queued a re-score itself: that is the job
                        data["jobs"][expect(item, "lead_id", str)] = job_id
                break
            data["upserted"].append(index)
            self.save()
            self.bar.update(len(planned))

    # queue

    def queue(self) -> None:
        data = self.state.data
        rejected = data["rejected"]
        if data["queue_chunks"] is None:
            ids = [
                row.lead_id
                for row in self.source.rows
                if row.error is None and str(row.line) not in rejected and row.lead_id not in data["jobs"]
            ]
            data["queue_chunks"] = chunks(ids, self.chunk)
            self.save()
        plan: list[list[str]] = data["queue_chunks"]
        self.phase("queue", sum(map(len, plan)), sum(len(plan[i]) for i in data["queued"]))
        for index, ids in enumerate(plan):
            if index in data["queued"]:
                continue
            key = idempotency_key(self.source.sha256, index, ids)
            reply = self.call("POST", "/v1/leads/score", body={"lead_ids": ids}, headers={"Idempotency-Key": key})
            jobs = {expect(job, "lead_id", str): job for job in expect(reply, "jobs", list)}
            for lead_id in ids:
                job = jobs.get(lead_id)
                if job is not None:
                    data["jobs"][lead_id] = expect(job, "job_id", str)
                if job is None or job.get("status") == "failed":
                    data["results"][lead_id] = {"status": "failed", "error": "the API could not queue a job for it"}
            data["queued"].append(index)
            self.save()
            self.bar.update(len(ids))

    # poll

    def poll(self) -> None:
        data = self.state.data
        jobs: dict[str, str] = data["jobs"]
        results: dict[str, dict[str, Any]] = data["results"]
        pending = [lead_id for lead_id in jobs if lead_id not in results]
        self.phase("score", len(jobs), len(jobs) - len(pending))
        deadline = self.clock() + self.timeout
        interval = self.poll_interval
        failed_rounds = 0
        pool = ThreadPoolExecutor(max_workers=POLL_WORKERS, thread_name_prefix="poll")
        try:
            while pending:
                if self.clock() >= deadline:
                    raise PollTimeout(
                        f"{len(pending)} job{'s' if len(pending) != 1 else ''} still running after "
                        f"{self.timeout:g} s (--timeout)"
                    )
                outcomes = list(pool.map(lambda lead_id: self.poll_one(jobs[lead_id]), pending))
                finished, waits, last_error = 0, [interval], None
                still: list[str] = []
                for lead_id, (kind, value) in zip(pending, outcomes, strict=True):
                    if kind == "done":
                        results[lead_id] = value
                        finished += 1
                    else:
                        still.append(lead_id)
                        if kind == "throttled":
                            waits.append(value)
                        elif kind == "transient":
                            last_error = value
                pending = still
                if finished:
                    self.save()
                    self.bar.update(finished)
                    interval = self.poll_interval
                else:
                    interval = min(max(interval, 0.1) * 1.5, MAX_POLL_INTERVAL_S)
                polled = [o for o in outcomes if o[0] != "skipped"]
                if polled and all(kind == "transient" for kind, _ in polled):
                    failed_rounds += 1
                    if failed_rounds >= MAX_ATTEMPTS and last_error is not None:
                        raise last_error
                else:
                    failed_rounds = 0
                if pending:
                    self.sleep(max(waits))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # on an error or ^C, not every queued poll

    def poll_one(self, job_id: str) -> tuple[str, Any]:
        """("done", results columns) | ("pending", None) | ("throttled", seconds) | ("transient", exc)
        | ("skipped", None); any other API error is raised."""
        if self.clock() < self._hold_until:
            return "skipped", None
        try:
            job = self.api.json("GET", f"/v1/jobs/{path_part(job_id)}")
        except ApiError as exc:
            if exc.status == 429:
                wait = exc.retry_after_s if exc.retry_after_s is not None else self.poll_interval
                with self._lock:
                    self._hold_until = max(self._hold_until, self.clock() + wait)
                return "throttled", wait
            if exc.status == 404:
                return "done", {"status": "failed", "error": f"job {job_id}: {exc.code}: {exc.message}"}
            if transient(exc):
                return "transient", exc
            raise
        except TRANSPORT_ERRORS as exc:
            return "transient", exc
        status = expect(job, "status", str)
        if status not in TERMINAL:
            return "pending", None
        return "done", job_columns(job)

    # retries

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The API's JSON answer, asked again after a 429 or 409 in progress (waiting its
        Retry-After) or a 502-504 or network failure (backing off), at most MAX_ATTEMPTS times.
        Safe: an upsert is idempotent, a score request carries an Idempotency-Key."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self.api.json(method, path, **kwargs)
            except ApiError as exc:
                if attempt == MAX_ATTEMPTS or not transient(exc):
                    raise
                wait = exc.retry_after_s if exc.retry_after_s is not None else backoff(attempt)
            except TRANSPORT_ERRORS:
                if attempt == MAX_ATTEMPTS:
                    raise
                wait = backoff(attempt)
            self.sleep(wait)
        raise AssertionError("unreachable")


def transient(exc: ApiError) -> bool:
    return exc.status in (429, 502, 503, 504) or (exc.status == 409 and exc.code == "idempotency_in_progress")


def backoff(attempt: int) -> float:
    return min(30.0, 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def leads_body(by_line: dict[int, Row], lines: Iterable[int]) -> dict[str, Any]:
    # "never": this command queues every lead itself (with an Idempotency-Key), so the upsert
    # must not queue automatic re-scores as well.
    return {"leads": [by_line[line].lead for line in lines], "score": "never"}


def rejected_index(exc: ApiError, count: int) -> int | None:
    """The chunk position a 422 names in `field` (`leads.3.size` → 3), if it names one."""
    match = REJECTED_FIELD.match(exc.field or "") if exc.status == 422 else None
    index = int(match.group(1)) if match else None
    return index if index is not None and index < count else None


def idempotency_key(sha256: str, index: int, ids: Sequence[str]) -> str:
    """The same chunk of the same input gets the same key, so a resumed run does not queue twice."""
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return f"cli-score-{sha256[:32]}-{index}-{digest[:16]}"


def expect(obj: Any, key: str, kind: type[T]) -> T:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise ProtocolError(f"unexpected answer from the API: no {kind.__name__} {key!r} in {obj!r:.200}")
    return value


# --- the results -------------------------------------------------------------------------------


def job_columns(job: dict[str, Any]) -> dict[str, Any]:
    status = expect(job, "status", str)
    score = job.get("result")
    if status == "succeeded" and isinstance(score, dict):
        return {
            "status": "succeeded",
            "score": score.get("score"),
            "tier": score.get("tier"),
            "scorer": score.get("scorer"),
            "model": score.get("model"),
            "confidence": score.get("confidence"),
            "top_factors": top_factors(score.get("factors") or []),
        }
    if status == "succeeded":
        return {"status": "failed", "error": "the job succeeded without a score"}
    error = job.get("error")
    parts = (error.get("type"), error.get("cause")) if isinstance(error, dict) else ()
    reason = ": ".join(str(part) for part in parts if part)
    return {"status": status, "error": reason or status}


def top_factors(factors: Sequence[Any], count: int = 3) -> str:
    """The `count` largest contributions, `criterion (+12.5)`, joined by `; `."""
    scored = [f for f in factors if isinstance(f, dict) and isinstance(f.get("contribution"), int | float)]
    best = sorted(scored, key=lambda f: f["contribution"], reverse=True)[:count]
    return "; ".join(f"{f.get('criterion')} ({f['contribution']:+.1f})" for f in best)


def result_rows(source: Input, state: State) -> list[dict[str, Any]]:
    data = state.data
    rows: list[dict[str, Any]] = []
    for row in source.rows:
        line: dict[str, Any] = dict.fromkeys(RESULT_COLUMNS, "")
        line.update(line=row.line, lead_id=row.lead_id)
        rejected = data["rejected"].get(str(row.line))
        if row.error or rejected:
            line.update(status="invalid", error=row.error or rejected)
        elif row.lead_id in data["results"]:
            line.update({k: "" if v is None else v for k, v in data["results"][row.lead_id].items()})
            line["job_id"] = data["jobs"].get(row.lead_id, "")
        else:
            line.update(status="unknown", error="no result recorded")
        rows.append(line)
    return rows


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_file(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def summary(rows: Sequence[dict[str, Any]], elapsed_s: float) -> str:
    def counted(key: str) -> str:
        counts = Counter(str(r[key]) for r in rows if r[key] != "")
        return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    return (
        f"{len(rows)} rows: {counted('status') or 'none'} | tiers: {counted('tier') or 'none'} | "
        f"scorer: {counted('scorer') or 'none'} | {elapsed_s:.1f} s"
    )
