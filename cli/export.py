"""`python -m cli export`: write a month's usage export from the API to a local file.

    python -m cli export --month 2026-11 [--format csv|jsonl] [--out PATH] [--tenant ID|*]
                         [--base-url URL] [--api-key KEY] [--page-size N] [--no-progress]

Follows `X-Next-Cursor` page by page with a progress bar (total: `X-Export-Rows`), writes to a
temporary file beside the target and renames it into place only when every page has arrived, then
checks the written lines against the API's totals: row count against `X-Export-Rows`, the sum of
`cost_micros` against `X-Export-Cost-Micros` (both from the rollups). Exit status: 0 when they
match, 1 on an API or network error (nothing is written), 3 when the file does not reconcile.
The base URL defaults to `$AIG_BASE_URL` (else http://127.0.0.1:8000, `make run`), the key to
`$AIG_API_KEY`. Standard library HTTP only, plus tqdm for the bar.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.common import Api, ApiError, add_connection_args, atomic_file, connection_problem, failure

DEFAULT_PAGE_SIZE = 1000
EXIT_OK, EXIT_ERROR, EXIT_UNRECONCILED = 0, 1, 3


@dataclass
class Tally:
    """What was written, to compare with what the API says the month holds."""

    rows: int = 0
    cost_micros: int = 0
    pages: int = 0
    api_rows: int = 0
    api_cost_micros: int = 0
    cost_column: int | None = field(default=None, repr=False)

    @property
    def reconciled(self) -> bool:
        return self.rows == self.api_rows and self.cost_micros == self.api_cost_micros


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("export", help="write a month's usage export to a local file")
    parser.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    parser.add_argument("--format", dest="fmt", choices=("csv", "jsonl"), default="csv")
    parser.add_argument("--out", type=Path, help="output file (default: usage-<month>[-<tenant>].<format>)")
    parser.add_argument("--tenant", help="another tenant's id, or * for all tenants (admin keys only)")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="rows per request (1-5000)")
    add_connection_args(parser)
    parser.set_defaults(run=run)


def default_out(month: str, fmt: str, tenant: str | None) -> Path:
    suffix = "" if tenant is None else f"-{'all' if tenant == '*' else tenant}"
    return Path(f"usage-{month}{suffix}.{fmt}")


def run(args: argparse.Namespace) -> int:
    problem = connection_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    out: Path = args.out or default_out(args.month, args.fmt, args.tenant)
    try:
        tally = download(args, out)
    except (ApiError, urllib.error.URLError, OSError) as exc:
        print(failure(exc, args.base_url), file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {out} ({tally.pages} page{'s' if tally.pages != 1 else ''})")
    print(f"rows: {tally.rows} written, {tally.api_rows} per the API's rollups")
    print(
        f"cost: {tally.cost_micros} µUSD ({usd(tally.cost_micros)} USD) written, "
        f"{tally.api_cost_micros} µUSD per X-Export-Cost-Micros"
    )
    if tally.reconciled:
        print("reconciled: yes (lines == rollups)")
        return EXIT_OK
    print("reconciled: NO — the file's totals differ from the API's (rows still arriving in this month?)")
    return EXIT_UNRECONCILED


def download(args: argparse.Namespace, out: Path) -> Tally:
    """Every page into a temp file beside `out`; renamed into place only after the last page."""
    from tqdm import tqdm

    api = Api(args.base_url, args.api_key)
    tally = Tally()
    params: dict[str, str] = {"month": args.month, "format": args.fmt, "page_size": str(args.page_size)}
    if args.tenant:
        params["tenant"] = args.tenant
    bar = None
    try:
        with atomic_file(out) as handle:
            cursor: str | None = None
            while True:
                headers, body = fetch(api, {**params, **({"cursor": cursor} if cursor else {})})
                tally.pages += 1
                tally.api_rows = int(headers.get("x-export-rows", "0"))
                tally.api_cost_micros = int(headers.get("x-export-cost-micros", "0"))
                if bar is None:
                    bar = tqdm(
                        total=tally.api_rows, unit="rows", desc=out.name, disable=args.no_progress, file=sys.stderr
                    )
                counted = count(body, args.fmt, tally, first_page=cursor is None)
                handle.write(body)
                bar.update(counted)
                cursor = headers.get("x-next-cursor")
                if not cursor:
                    break
    finally:
        if bar is not None:
            bar.close()
    return tally


def fetch(api: Api, params: dict[str, str]) -> tuple[dict[str, str], bytes]:
    return api.call("GET", "/v1/usage/export", params=params, headers={"Accept-Encoding": "gzip"})


def count(body: bytes, fmt: str, tally: Tally, *, first_page: bool) -> int:
    """Adds a page's rows and cost to the tally; returns its row count."""
    text = body.decode("utf-8")
    rows = 0
    if fmt == "jsonl":
        for line in text.splitlines():
            if line.strip():
                tally.cost_micros += int(json.loads(line)["cost_micros"])
                rows += 1
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
        if first_page:
            header = next(reader, None)
            tally.cost_column = header.index("cost_micros") if header else None
        for record in reader:
            if tally.cost_column is None:
                raise ApiError(200, "bad_export", "CSV export has no cost_micros column")
            tally.cost_micros += int(record[tally.cost_column])
            rows += 1
    tally.rows += rows
    return rows


def usd(micros: int) -> str:
    whole, frac = divmod(micros, 1_000_000)
    return f"{whole}.{frac:06d}"
