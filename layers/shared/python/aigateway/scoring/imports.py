"""Lead files dropped in the imports bucket: `incoming/<tenant id>/<name>.csv|.jsonl`.

S3 announces each new object on EventBridge; the `lead_batch` function reads it, upserts the
good rows (scoring every new, changed or never-scored lead, trigger `import`) and writes a report
beside it, `reports/<tenant id>/<name>.json`, naming each rejected row by its line. A repeated
event re-reads the same object: unchanged leads are not rewritten and a lead with a re-score
queued in the last hour is not queued again, so a redelivery changes nothing.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

from aigateway.errors import InvalidRequest
from aigateway.scoring.records import read_file
from aigateway.scoring.service import ImportReport, LeadService
from aigateway.store.repos import Tenants

INCOMING = "incoming/"
REPORTS = "reports/"
MAX_FILE_BYTES = 50 * 1024 * 1024


@lru_cache(maxsize=1)
def _s3() -> Any:
    import boto3

    return boto3.client("s3")


def parse_key(key: str) -> tuple[str, str]:
    """(tenant id, file name) of an incoming object key; InvalidRequest for anything else."""
    key = unquote_plus(key)
    parts = key.removeprefix(INCOMING).split("/")
    if not key.startswith(INCOMING) or len(parts) != 2 or not all(parts):
        raise InvalidRequest(f"{key!r} is not incoming/<tenant id>/<file>", field="key")
    if not parts[1].lower().endswith((".csv", ".jsonl", ".ndjson")):
        raise InvalidRequest(f"{parts[1]!r} is neither .csv nor .jsonl", field="key")
    return parts[0], parts[1]


def import_object(service: LeadService, tenants: Tenants, bucket: str, key: str) -> dict[str, Any]:
    """Imports one object and writes its report; returns the report (as stored)."""
    tenant_id, name = parse_key(key)
    report: dict[str, Any] = {"bucket": bucket, "key": key, "tenant_id": tenant_id}
    if tenants.get(tenant_id) is None:
        report["error"] = f"no tenant {tenant_id!r}: nothing imported"
    else:
        head = _s3().head_object(Bucket=bucket, Key=key)
        if int(head["ContentLength"]) > MAX_FILE_BYTES:
            report["error"] = f"the file is over {MAX_FILE_BYTES // (1024 * 1024)} MiB: split it"
        else:
            body = _s3().get_object(Bucket=bucket, Key=key)["Body"].read()
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                report["error"] = "the file is not UTF-8 text"
            else:
                result: ImportReport = service.import_rows(tenant_id, read_file(name, text))
                report.update(result.model_dump(mode="json"))
    _s3().put_object(
        Bucket=bucket,
        Key=f"{REPORTS}{tenant_id}/{name}.json",
        Body=json.dumps(report, indent=1).encode(),
        ContentType="application/json",
    )
    return report
