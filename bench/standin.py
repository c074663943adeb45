"""A local stand-in for Amplitude's Export API, serving one cached hour as a ZIP.

    python -m bench.standin PORT ZIP HOUR(YYYYMMDDTHH) API_KEY SECRET_KEY

`GET /api/2/export?start=H&end=H` with the right Basic auth answers the ZIP, streamed from
disk; any other hour answers 404 (no data), wrong credentials 401.
"""

from __future__ import annotations

import base64
import shutil
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


def serve(port: int, archive: Path, hour: str, api_key: str, secret_key: str) -> None:
    expected = "Basic " + base64.b64encode(f"{api_key}:{secret_key}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path != "/api/2/export":
                return self._empty(404)
            if self.headers.get("Authorization") != expected:
                return self._empty(401)
            if query.get("start") != [hour] or query.get("end") != [hour]:
                return self._empty(404)
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(archive.stat().st_size))
            self.end_headers()
            with archive.open("rb") as body:
                shutil.copyfileobj(body, self.wfile, 1 << 20)

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    port, archive, hour, key, secret = sys.argv[1:6]
    serve(int(port), Path(archive), hour, key, secret)
