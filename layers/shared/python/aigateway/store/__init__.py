"""The only code that touches DynamoDB. Imports no other room of aigateway.

One small repository per item family (api keys, tenants, cache entries, ledger rows, jobs),
all on a shared low-level client. Every call is counted per request, and calls that run side by
side count as one *phase* (one round-trip on the critical path): DESIGN §5 budgets them.
"""

from aigateway.store.dynamo import (
    ConditionFailed,
    Dynamo,
    RequestStats,
    dynamo,
    request_stats,
    track_request,
)

__all__ = ["ConditionFailed", "Dynamo", "RequestStats", "dynamo", "request_stats", "track_request"]
