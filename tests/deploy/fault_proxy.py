"""A loopback HTTP proxy in front of Azurite that answers a share of the requests with faults.

Each request is forwarded to Azurite, except that with probability `rate` it gets one of:
  - `503` ServerBusy or `500` InternalError, with an Azure error body, before it reaches Azurite;
  - a dropped connection (closed without an answer), before it reaches Azurite;
  - a slow answer: forwarded, then answered `slow_seconds` late.
Faults are decided before the request reaches Azurite, as an overloaded front end does, so a
faulted request never half-happens; the slow answer is the one that did happen. The draws
come from a seeded generator, and the counts of each fault are kept for the test's report.
It serves only 127.0.0.1 and stops with the test.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("503", "500", "drop", "slow")
_ERROR = {
    "503": ("ServerBusy", "The server is currently unable to receive requests. Please retry your request."),
    "500": ("InternalError", "The server encountered an internal error. Please retry the request."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    def __init__(self, upstream_port: int, rate: float, seed: int = 0, slow_seconds: float = 2.0):
        self.upstream_port = upstream_port
        self.rate = rate
        self.slow_seconds = slow_seconds
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.enabled = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.draw()
                if fault in _ERROR:
                    code, message = _ERROR[fault]
                    payload = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                               f"<Message>{message}</Message></Error>").encode()
                    self.send_response(int(fault))
                    self.send_header("x-ms-error-code", code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body if body or length else None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                if fault == "slow":
                    time.sleep(proxy.slow_seconds)
                self.send_response_only(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:  # a client that hung up: not news
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    def draw(self) -> str | None:
        with self.lock:
            self.counts["requests"] += 1
            if not self.enabled or self.random.random() >= self.rate:
                return None
            fault = self.random.choice(FAULTS)
            self.counts[fault] += 1
            return fault

    def start(self) -> "FaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
