"""``python -m harness.services.fault_proxy``: an HTTP proxy in front of moto S3 or MLflow that
fails the requests of one scenario for a while, as a real outage would.

Pods and Airflow reach S3 and MLflow through it; everything else is passed through unchanged.
A fault is a rule file in the proxy's rules folder (one file per replay, written atomically, so
parallel scenarios never share a rule): requests whose path, query or body contain the rule's
``match`` (the replay's own data prefix or model name) are answered with the fault. A rule may
be written before the run starts, dormant until a matching request carries ``begins_with`` in
its User-Agent (pods name their task there: ``app/<task id>``), so the proxy itself decides
when the outage begins, with no poll racing a fast pod. A rule's window opens at the first
request it fails and lasts ``seconds``, or ``requests`` failed requests, whichever ends first
(both null: until the file is removed). Toxiproxy and Envoy's
fault filter do the same; this one needs no image.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

FaultKind = Literal["unavailable", "reset"]
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business, never forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}
# What each service says when it is unavailable, as its clients expect to parse it.
_UNAVAILABLE_BODY = {
    "s3": (
        "application/xml",
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
        b"<Message>Service is unable to handle request (fault injected by ml-testbed)."
        b"</Message></Error>",
    ),
    "mlflow": (
        "application/json",
        b'{"error_code": "TEMPORARILY_UNAVAILABLE", '
        b'"message": "MLflow is unavailable (fault injected by ml-testbed)"}',
    ),
}


@dataclass(frozen=True)
class FaultRule:
    """Fail the requests that contain ``match``: 503 (``unavailable``) or a reset connection.

    For ``seconds`` from the first failed request, and at most ``requests`` of them (None: no
    bound of that kind).
    """

    match: str
    fault: FaultKind
    seconds: float | None
    requests: int | None = None
    # Dormant until a matching request's User-Agent contains this (None: in force at once).
    begins_with: str | None = None


def write_rule(rules_dir: Path, name: str, rule: FaultRule) -> Path:
    """Puts ``rule`` in force under ``name`` (atomically: the proxy never reads half a file)."""
    rules_dir.mkdir(parents=True, exist_ok=True)
    path = rules_dir / f"{name}.json"
    partial = rules_dir / f".{name}.json.partial"
    partial.write_text(json.dumps(asdict(rule)))
    os.replace(partial, path)
    return path


def remove_rule(rules_dir: Path, name: str) -> None:
    """Ends the rule ``name`` (nothing happens if it is not there)."""
    (rules_dir / f"{name}.json").unlink(missing_ok=True)


class _Rules:
    """The rules in force, re-read when the folder changes; the window of each one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._opened: dict[str, float] = {}
        self._begun: set[str] = set()
        self.failed: dict[str, int] = {}

    def fault_for(self, text: bytes, user_agent: str = "") -> tuple[str, FaultRule] | None:
        """The rule that fails a request with this path, query and body, if any."""
        for path in sorted(self.folder.glob("*.json")):
            try:
                rule = FaultRule(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if rule.match.encode() not in text:
                continue
            with self._lock:
                if rule.begins_with is not None and path.name not in self._begun:
                    if rule.begins_with not in user_agent:
                        continue
                    self._begun.add(path.name)
                opened = self._opened.setdefault(path.name, time.monotonic())
                failed = self.failed.get(path.name, 0)
                if rule.seconds is not None and time.monotonic() - opened > rule.seconds:
                    continue
                if rule.requests is not None and failed >= rule.requests:
                    continue
                self.failed[path.name] = failed + 1
            return path.name, rule
        return None


def _handler(service: str, upstream: str, rules: _Rules) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            matched = rules.fault_for(
                self.path.encode() + b"\n" + body, self.headers.get("User-Agent", "")
            )
            if matched is not None:
                self._fail(*matched)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            upstream_connection = http.client.HTTPConnection(
                target.hostname, target.port, timeout=300
            )
            try:
                upstream_connection.request(self.command, self.path, body=body, headers=headers)
                answer = upstream_connection.getresponse()
                payload = answer.read()
            finally:
                upstream_connection.close()
            self.send_response_only(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _fail(self, rule_name: str, rule: FaultRule) -> None:
            self.log_message("fault %s (%s): %s %s", rule.fault, rule_name, self.command, self.path)
            if rule.fault == "reset":
                # SO_LINGER 0: the close sends RST, as a crashed server's host does.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                self.close_connection = True
                return
            content_type, payload = _UNAVAILABLE_BODY[service]
            self.send_response(503)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Retry-After", "1")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward

    return Handler


def serve(service: str, listen: str, upstream: str, rules_dir: Path) -> None:
    """Proxies ``listen`` (HOST:PORT) to ``upstream`` until killed."""
    host, port = listen.rsplit(":", 1)
    rules_dir.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((host, int(port)), _handler(service, upstream, _Rules(rules_dir)))
    server.daemon_threads = True
    print(f"fault proxy for {service}: {listen} -> {upstream}, rules in {rules_dir}", flush=True)
    server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    """The proxy's command line (the stack starts it; see harness.services.proxies)."""
    parser = argparse.ArgumentParser(prog="python -m harness.services.fault_proxy")
    parser.add_argument("--service", choices=sorted(_UNAVAILABLE_BODY), required=True)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT of the service")
    parser.add_argument("--rules", type=Path, required=True, help="folder of rule files")
    args = parser.parse_args(argv)
    serve(args.service, args.listen, args.upstream, args.rules)


if __name__ == "__main__":
    main()
