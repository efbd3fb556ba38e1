"""Lambda for finance: GET /v1/budget, GET /v1/usage, GET /v1/usage/export; the monthly S3 export.

(Being written: see the governance issue.)
"""

from __future__ import annotations

from aigateway.api import create_app, entrypoint

app = create_app()

lambda_handler = entrypoint(app)
