"""`python -m cli bootstrap --table STATE_TABLE [--tenant ops] [--user operator]`: the first operator key.

Every other key is issued through the API (`POST /v1/admin/tenants/{t}/keys`), which needs a key;
this breaks the circle once per deployment. It writes straight to the State table (the stack output
`StateTableName`) with the caller's AWS credentials: the operator's tenant if it does not exist yet,
then an `admin` key, printed once (only its SHA-256 is stored). Running it again issues another key.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from aigateway.auth import issue_key
from aigateway.store.dynamo import Dynamo
from aigateway.store.repos import ApiKeys, Tenants


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("bootstrap", help="create the first operator (admin) key of a deployment")
    parser.add_argument("--table", required=True, help="the State table's name (stack output StateTableName)")
    parser.add_argument("--tenant", default="ops", help="the operator's own tenant (created if missing)")
    parser.add_argument("--user", default="operator", help="who holds the key")
    parser.add_argument("--region", help="AWS region (default: the AWS SDK's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, client: Any = None) -> int:
    import boto3

    db = Dynamo(client or boto3.client("dynamodb", region_name=args.region))
    now = datetime.now(UTC).isoformat()
    created = Tenants(db, args.table).create(args.tenant, name=f"{args.tenant} (operators)", created_at=now)
    item, api_key = issue_key(
        ApiKeys(db, args.table), tenant_id=args.tenant, user_id=args.user, role="admin", created_at=now
    )
    print(f"tenant {args.tenant!r} {'created' if created else 'already existed'}", file=sys.stderr)
    print(f"admin key {item['key_id']} for {args.user!r} (shown once; keep it in a secret store):", file=sys.stderr)
    print(api_key)
    return 0
