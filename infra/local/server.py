"""The loopback HTTP server in front of LocalApiGateway."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infra.local.apigateway import HttpResponse, LocalApiGateway

LOCAL_CONTROL = "/_local/schedules/"
LOCAL_IMPORTS = "/_local/imports/"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gateway: LocalApiGateway

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without this, Nagle holds the body for the
        # client's delayed ACK (~40 ms on Linux) on every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith(LOCAL_CONTROL):
            response = self._control()
        elif self.path.startswith(LOCAL_IMPORTS):
            response = self._import(body)
        else:
            response = self.gateway.handle(
                self.command, self.path, dict(self.headers.items()), body, self.client_address[0]
            )
        self.send_response(response.status)
        for key, value in response.headers.items():
            if key not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("content-length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _control(self) -> HttpResponse:
        """Local-only operator hooks (not part of the API): `POST /_local/schedules/<name>` fires a schedule."""
        name = self.path[len(LOCAL_CONTROL) :].strip("/")
        if self.command != "POST":
            return HttpResponse(405, {"content-type": "application/json"}, b'{"message":"use POST"}')
        try:
            result = self.gateway.stack.run_schedule(name)
        except KeyError as exc:
            return HttpResponse(404, {"content-type": "application/json"}, json.dumps({"message": str(exc)}).encode())
        return HttpResponse(200, {"content-type": "application/json"}, json.dumps(result).encode())

    def _import(self, body: bytes) -> HttpResponse:
        """`PUT /_local/imports/<tenant>/<file.csv|jsonl>`: drop a lead file in the imports bucket
        (as `aws s3 cp` would on AWS); answers the import report."""
        parts = self.path[len(LOCAL_IMPORTS) :].strip("/").split("/")
        if self.command != "PUT" or len(parts) != 2:
            message = b'{"message":"use PUT /_local/imports/<tenant>/<file.csv|jsonl>"}'
            return HttpResponse(400, {"content-type": "application/json"}, message)
        try:
            report = self.gateway.stack.drop_import(parts[0], parts[1], body)
        except Exception as exc:  # noqa: BLE001 - a local operator hook: say what went wrong
            return HttpResponse(400, {"content-type": "application/json"}, json.dumps({"message": str(exc)}).encode())
        return HttpResponse(200, {"content-type": "application/json"}, json.dumps(report).encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the handlers' structured logs say what happened; no access-log noise


class LocalHttpServer:
    def __init__(self, gateway: LocalApiGateway, host: str = "127.0.0.1", port: int = 8000):
        handler = type("Handler", (_Handler,), {"gateway": gateway})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="local-http", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
