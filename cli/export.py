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
import gzip
import io
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_PAGE_SIZE = 1000
TIMEOUT_S = 60.0
EXIT_OK, EXIT_ERROR, EXIT_UNRECONCILED = 0, 1, 3


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


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
    parser.add_argument("--base-url", default=os.environ.get("AIG_BASE_URL", DEFAULT_BASE_URL))
    parser.add_argument("--api-key", default=os.environ.get("AIG_API_KEY"), help="default: $AIG_API_KEY")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="rows per request (1-5000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def default_out(month: str, fmt: str, tenant: str | None) -> Path:
    suffix = "" if tenant is None else f"-{'all' if tenant == '*' else tenant}"
    return Path(f"usage-{month}{suffix}.{fmt}")


def run(args: argparse.Namespace) -> int:
    if not args.api_key:
        print("error: no API key (pass --api-key or set AIG_API_KEY)", file=sys.stderr)
        return EXIT_ERROR
    if urlsplit(args.base_url).scheme not in ("http", "https"):
        print(f"error: --base-url must be an http(s) URL, got {args.base_url!r}", file=sys.stderr)
        return EXIT_ERROR
    out: Path = args.out or default_out(args.month, args.fmt, args.tenant)
    try:
        tally = download(args, out)
    except ApiError as exc:
        rid = f" (request_id {exc.request_id})" if exc.request_id else ""
        print(f"error: HTTP {exc.status} {exc.code}: {exc.message}{rid}", file=sys.stderr)
        return EXIT_ERROR
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach {args.base_url}: {exc}", file=sys.stderr)
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

    out.parent.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    params: dict[str, str] = {"month": args.month, "format": args.fmt, "page_size": str(args.page_size)}
    if args.tenant:
        params["tenant"] = args.tenant
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, then renamed or removed
        mode="wb", dir=out.parent, prefix=f".{out.name}.", suffix=".part", delete=False
    )
    bar = None
    try:
        cursor: str | None = None
        while True:
            headers, body = fetch(args.base_url, args.api_key, {**params, **({"cursor": cursor} if cursor else {})})
            tally.pages += 1
            tally.api_rows = int(headers.get("x-export-rows", "0"))
            tally.api_cost_micros = int(headers.get("x-export-cost-micros", "0"))
            if bar is None:
                bar = tqdm(total=tally.api_rows, unit="rows", desc=out.name, disable=args.no_progress, file=sys.stderr)
            counted = count(body, args.fmt, tally, first_page=cursor is None)
            handle.write(body)
            bar.update(counted)
            cursor = headers.get("x-next-cursor")
            if not cursor:
                break
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.chmod(handle.name, 0o666 & ~_umask())  # a temp file is private (0600); the export is not
        os.replace(handle.name, out)
    except BaseException:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return tally


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fetch(base_url: str, api_key: str, params: dict[str, str]) -> tuple[dict[str, str], bytes]:
    url = f"{base_url.rstrip('/')}/v1/usage/export?{urlencode(params)}"
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked to be http(s)
        url,
        headers={"Authorization": f"Bearer {api_key}", "Accept-Encoding": "gzip", "User-Agent": "aigateway-cli"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            headers = {k.lower(): v for k, v in response.headers.items()}
            body = response.read()
    except urllib.error.HTTPError as exc:
        headers = {k.lower(): v for k, v in exc.headers.items()}
        raise api_error(exc.code, _decoded(headers, exc.read())) from None
    return headers, _decoded(headers, body)


def _decoded(headers: dict[str, str], body: bytes) -> bytes:
    return gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body


def api_error(status: int, body: bytes) -> ApiError:
    """The gateway's `{error: {code, message}, request_id}`, or API Gateway's bare `{message}`."""
    try:
        data = json.loads(body)
    except ValueError:
        return ApiError(status, "http_error", body.decode("utf-8", "replace")[:200] or "no body")
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return ApiError(status, str(error.get("code")), str(error.get("message")), data.get("request_id"))
    message = data.get("message", "") if isinstance(data, dict) else ""
    return ApiError(status, "http_error", str(message or data))


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
