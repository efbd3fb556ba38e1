"""The API's OpenAPI document, composed from every HTTP function's Powertools resolver.

Each function only knows its own routes, so the whole document is built at packaging time
(infra/layers.py ships it in the shared layer) and by the local runtime at start-up.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from infra.routes import ROUTES, http_functions

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Serverless AI Gateway"
VERSION = "1.0.0"


def ensure_paths() -> None:
    """Makes the function folders and the shared layer importable (synth runs from the repo root)."""
    for path in (ROOT / "functions", ROOT / "layers" / "shared" / "python"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def build() -> dict[str, Any]:
    ensure_paths()
    document: dict[str, Any] = {}
    for name in http_functions():
        app = importlib.import_module(f"{name}.handler").app
        part = json.loads(app.get_openapi_json_schema(title=TITLE, version=VERSION))
        if not document:
            document = part
            document.setdefault("components", {}).setdefault("schemas", {})
            continue
        document["paths"].update(part.get("paths", {}))
        document["components"]["schemas"].update(part.get("components", {}).get("schemas", {}))
    document["components"]["securitySchemes"] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"}
    }
    public = {(r.method.lower(), r.path) for r in ROUTES if r.public}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if (method, path) not in public:
                operation["security"] = [{"apiKey": []}]
    return document


def write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build(), indent=2, sort_keys=True), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(json.dumps(build(), indent=2))
