"""Lambda for the OpenAI-compatible surface (/v1/chat/completions, /v1/models) and conversations.

No AWS or OpenAI code here.
"""

from __future__ import annotations

from aigateway.api import create_app, entrypoint
from chat import conversations

app = create_app()
app.include_router(conversations.router)

lambda_handler = entrypoint(app)
