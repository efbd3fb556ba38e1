"""What the operator commands share: the connection options, one HTTP call to the gateway's API,
its error body, and writing an output file atomically (temp file beside it, then rename).

Standard library HTTP only. `Api.opener` is `urllib.request.urlopen`; tests hand in a fake one.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 60.0

Opener = Callable[..., Any]  # urllib.request.urlopen's shape: (request, timeout=...) -> response


class ApiError(Exception):
    """An HTTP error answer: the gateway's `{error: {code, message, field?, …}, request_id}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field = field
        self.details = details or {}
        self.retry_after_s = retry_after_s


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=os.environ.get("AIG_BASE_URL", DEFAULT_BASE_URL))
    parser.add_argument("--api-key", default=os.environ.get("AIG_API_KEY"), help="default: $AIG_API_KEY")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def connection_problem(args: argparse.Namespace) -> str | None:
    """Why `--base-url`/`--api-key` cannot work, or None."""
    if not args.api_key:
        return "no API key (pass --api-key or set AIG_API_KEY)"
    if urlsplit(args.base_url).scheme not in ("http", "https"):
        return f"--base-url must be an http(s) URL, got {args.base_url!r}"
    return None


def failure(exc: BaseException, base_url: str) -> str:
    """The one-line `error: …` for an API error or a transport failure."""
    if isinstance(exc, ApiError):
        rid = f" (request_id {exc.request_id})" if exc.request_id else ""
        return f"error: HTTP {exc.status} {exc.code}: {exc.message}{rid}"
    return f"error: cannot reach {base_url}: {exc}"


@dataclass
class Api:
    """The gateway's HTTP API with one key: `call` returns (lower-cased headers, body bytes) or
    raises ApiError for a 4xx/5xx answer (urllib.error.URLError / OSError when it cannot connect)."""

    base_url: str
    api_key: str
    opener: Opener = field(default=urllib.request.urlopen)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[dict[str, str], bytes]:
        url = f"{self.base_url.rstrip('/')}{path}" + (f"?{urlencode(params)}" if params else "")
        sent = {"Authorization": f"Bearer {self.api_key}", "User-Agent": "aigateway-cli", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=sent, method=method)  # noqa: S310 - http(s) checked
        try:
            with self.opener(request, timeout=TIMEOUT_S) as response:
                received = {k.lower(): v for k, v in response.headers.items()}
                raw = response.read()
        except urllib.error.HTTPError as exc:
            received = {k.lower(): v for k, v in exc.headers.items()}
            raise api_error(exc.code, _decoded(received, exc.read()), received) from None
        return received, _decoded(received, raw)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        _, raw = self.call(method, path, **kwargs)
        return json.loads(raw) if raw else None


def path_part(value: str) -> str:
    return quote(value, safe="")


def _decoded(headers: dict[str, str], body: bytes) -> bytes:
    return gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body


def api_error(status: int, body: bytes, headers: dict[str, str] | None = None) -> ApiError:
    """The gateway's `{error: {code, message}, request_id}`, or API Gateway's bare `{message}`."""
    retry_after_s = retry_after((headers or {}).get("retry-after"))
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace")[:200] or "no body"
        return ApiError(status, "http_error", text, retry_after_s=retry_after_s)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        details = {k: v for k, v in error.items() if k not in ("code", "message", "field")}
        field_ = error.get("field")
        return ApiError(
            status,
            str(error.get("code")),
            str(error.get("message")),
            data.get("request_id"),
            field=None if field_ is None else str(field_),
            details=details,
            retry_after_s=retry_after_s,
        )
    message = data.get("message", "") if isinstance(data, dict) else ""
    return ApiError(status, "http_error", str(message or data), retry_after_s=retry_after_s)


def retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def read_utf8(path: Path) -> tuple[bytes, str]:
    """A UTF-8 file's bytes (to fingerprint) and text (a BOM dropped); ValueError with a readable reason."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return raw, raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start})") from None


@contextmanager
def atomic_file(out: Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """A temp file beside `out`, renamed onto it (with the umask's mode, not the temp file's 0600)
    only if the block ends without an exception; removed otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, then renamed or removed
        mode=mode, dir=out.parent, prefix=f".{out.name}.", suffix=".part", delete=False, **open_kwargs
    )
    try:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.chmod(handle.name, 0o666 & ~_umask())
        os.replace(handle.name, out)
    except BaseException:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
