"""A moto S3 server on a loopback port and a fault-injecting HTTP proxy in front of it (tests and
bench/s3_faults.py).

``MotoServer(threaded=False)`` serves one request at a time. moto 5.2's conditional PUT reads
the object and then writes it with no lock between (moto/s3/responses.py ``put_object``), so
two conditional PUTs served by two threads at once could both pass; S3 and MinIO make the check
and the write one step, and so does a moto that serves requests one by one.

``FaultProxy`` forwards every request to the server and, on a share of them (``rate``), injects
one fault, drawn from ``kinds`` (or, with ``every=N``, on every Nth request, the kinds in turn, a
``cut_body`` waiting for the next GET: every kind comes up, however few the requests):

- ``500``: an ``InternalError`` answer, the request never forwarded;
- ``503``: a ``SlowDown`` answer (S3's throttling), never forwarded;
- ``drop``: the connection closed before the request is forwarded;
- ``drop_after``: the request forwarded (it takes effect) and the connection closed before the
  answer: the client retries a request that already happened;
- ``cut_body``: a GET whose answer has a body: the headers and half the body, then the
  connection closed.

``outage()`` makes every later request (or every one after the next N) answer 503. ``delay_s`` holds requests whose path
contains ``delay_match`` (the lease: ``lock.json``) before forwarding them, widening the window
between one run's read and its write. ``strip_conditions`` drops ``If-Match`` and
``If-None-Match`` from PUT and DELETE requests: a store that ignores conditions. Counts:
``requests`` (all), ``faults`` (by kind).
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("500", "503", "drop", "drop_after", "cut_body")
_ERRORS = {"500": (500, "InternalError", "We encountered an internal error. Please try again."),
           "503": (503, "SlowDown", "Please reduce your request rate.")}
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class MotoServer:
    """moto's S3 on ``127.0.0.1:<free port>``; ``threaded=False``: one request at a time."""

    def __init__(self, threaded: bool = False):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        class Quiet(MotoRequestHandler):
            def log_request(self, *args, **kwargs):
                pass

        self._server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded,
                                   request_handler=Quiet)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="moto")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, kinds=KINDS, seed: int | None = None,
                 delay_s: float = 0.0, delay_match: str = "lock.json", strip_conditions: bool = False,
                 every: int = 0):
        self.upstream = upstream.split("://", 1)[1]
        self.rate, self.kinds, self.delay_s, self.delay_match = rate, tuple(kinds), delay_s, delay_match
        self.strip_conditions = strip_conditions
        self.every, self._turn, self._owed = every, 0, None
        self.requests, self.faults = 0, Counter()
        self._down_at: int | None = None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pools expect

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hung up: nothing to report
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()

    def outage(self, down: bool = True, after: int = 0) -> None:
        """Every request from now on (or after ``after`` more) answers 503 SlowDown, until
        ``outage(False)``."""
        with self._lock:
            self._down_at = (self.requests + after) if down else None

    def reset(self, rate: float | None = None, seed: int | None = None, every: int | None = None) -> None:
        with self._lock:
            self.requests, self.faults = 0, Counter()
            self._turn, self._owed = 0, None
            if rate is not None:
                self.rate = rate
            if every is not None:
                self.every = every
            if seed is not None:
                self._rng = random.Random(seed)

    def _draw(self, method: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self._down_at is not None and self.requests > self._down_at:
                self.faults["503"] += 1
                return "503"
            if self.every:
                return self._in_turn(method)
            if self._rng.random() >= self.rate:
                return None
            kinds = [k for k in self.kinds if k != "cut_body" or method == "GET"]
            kind = self._rng.choice(kinds)
            self.faults[kind] += 1
            return kind

    def _in_turn(self, method: str) -> str | None:
        """``every``: the next kind on every Nth request; a cut_body drawn for another method
        goes to the next GET. (Called under the lock.)"""
        if self._owed is not None and method == "GET":
            kind, self._owed = self._owed, None
        elif self.requests % self.every:
            return None
        else:
            kind = self.kinds[self._turn % len(self.kinds)]
            self._turn += 1
            if kind == "cut_body" and method != "GET":
                self._owed = kind
                return None
        self.faults[kind] += 1
        return kind

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        kind = self._draw(h.command)
        if kind in _ERRORS:
            status, code, message = _ERRORS[kind]
            data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                    f'</Message><RequestId>vidcurate-fault</RequestId></Error>').encode()
            h.send_response(status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if kind == "drop":
            return _drop(h)
        if self.delay_s and self.delay_match in h.path:
            time.sleep(self.delay_s)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        if self.strip_conditions and h.command in ("PUT", "DELETE"):
            headers = {k: v for k, v in headers.items() if k.lower() not in ("if-match", "if-none-match")}
        conn = http.client.HTTPConnection(self.upstream, timeout=120)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            status, reply_headers = reply.status, reply.getheaders()
        finally:
            conn.close()
        if kind == "drop_after" or (kind == "cut_body" and len(data) < 2):
            return _drop(h)
        h.send_response(status)
        for k, v in reply_headers:
            if k.lower() not in _HOP and k.lower() != "content-length":
                h.send_header(k, v)
        length = dict((k.lower(), v) for k, v in reply_headers).get("content-length") if h.command == "HEAD" else None
        h.send_header("Content-Length", length if length is not None else str(len(data)))
        h.end_headers()
        if h.command == "HEAD":
            return
        if kind == "cut_body":
            h.wfile.write(data[:len(data) // 2])
            h.wfile.flush()
            return _drop(h)
        h.wfile.write(data)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
        out = b""
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += h.rfile.read(size)
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


def _drop(h: BaseHTTPRequestHandler) -> None:
    """Close the client's connection without (the rest of) an answer."""
    h.close_connection = True
    try:
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
