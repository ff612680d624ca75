"""Fixtures: the real server binary (from TOLLGATE_BIN), its plan, and a tiny TCP
proxy that can drop answers, fake a 503 or play dead (no mock of the server)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterator, List, Optional

import httpx
import pytest

PLAN = {
    "defaultPlan": "free",
    "plans": [
        {
            "id": "free",
            "limits": [
                {
                    "id": "images",
                    "quota": 5,
                    "window": {"type": "lifetime"},
                    "match": [{"event": "image.*"}],
                },
                {
                    "id": "tokens",
                    "quota": 1000,
                    "window": {"type": "lifetime"},
                    "match": [{"event": "llm.tokens"}],
                },
            ],
        }
    ],
    "creditPacks": [
        {"id": "pack10", "items": [{"id": "imgs", "quantity": 10, "match": [{"event": "image.*"}]}]}
    ],
}


@dataclass
class Server:
    url: str
    secret: str
    publishable: str
    live_secret: str = ""
    live_publishable: str = ""


def _binary() -> str:
    path = os.environ.get("TOLLGATE_BIN")
    if not path:
        pytest.exit("TOLLGATE_BIN is not set: point it at a built `tollgate` binary", 2)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.exit(f"TOLLGATE_BIN={path} is not an executable file", 2)
    return path


def _wait_listening(proc: subprocess.Popen, deadline: float) -> str:
    """Read stderr until the `listening on http://ADDR` line; keep draining after."""
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"tollgate serve exited early (code {proc.poll()})")
        marker = "listening on http://"
        if marker in line:
            addr = line.split(marker, 1)[1].split()[0]
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return f"http://{addr}"
    raise RuntimeError("tollgate serve did not log `listening on` in time")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    binary = _binary()
    data_dir = tempfile.mkdtemp(prefix="tollgate-py-sdk-")
    proc: Optional[subprocess.Popen] = None
    try:
        out = subprocess.run(
            [binary, "init", "--data-dir", data_dir, "--json"],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        keys = json.loads(out.stdout)["keys"]
        proc = subprocess.Popen(
            [binary, "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = _wait_listening(proc, time.monotonic() + 30)
        test, live = keys["test"], keys["live"]
        srv = Server(url, test["secret"], test["publishable"], live["secret"], live["publishable"])
        admin(srv, "PUT", "/v1/plans", PLAN)
        yield srv
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def admin(
    srv: Server, method: str, path: str, body: Optional[dict] = None, key: Optional[str] = None
) -> dict:
    """A raw call with the secret key (the test one unless ``key`` is given), for setup
    and for reading state around the SDK."""
    resp = httpx.request(
        method, srv.url + path, json=body, headers={"Authorization": f"Bearer {key or srv.secret}"}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def used_reserved(srv: Server, user_id: str, limit_id: str = "images") -> tuple:
    usage = admin(srv, "GET", f"/v1/users/{user_id}/usage")
    state = next(x for x in usage["limits"] if x["limitId"] == limit_id)
    return state["used"], state["reserved"]


@pytest.fixture
def user() -> str:
    """A fresh user per test, so tests share one plan document and server."""
    return f"u_{uuid.uuid4().hex[:12]}"


class Proxy:
    """A TCP proxy in front of the server, one request per connection.

    ``mode``: ``pass``; ``down`` (accept and close: the server looks unreachable);
    ``drop`` (forward the next request whose path starts with ``drop_path`` but
    close the connection instead of answering, once); ``unavailable`` (answer the
    next such request with a 503 ``unavailable`` without forwarding, once).
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.replace("http://", "").split(":")
        self.upstream = (host, int(port))
        self.mode = "pass"
        self.drop_path = ""
        self.retry_after = "0"
        self.seen: List[str] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if self.mode == "down":
                return
            request = _read_request(conn)
            if request is None:
                return
            line = request.split(b"\r\n", 1)[0].decode()
            path = line.split(" ")[1]
            self.seen.append(f"{line.split(' ')[0]} {path}")
            once = self.mode in ("drop", "unavailable") and path.startswith(self.drop_path)
            if once and self.mode == "unavailable":
                self.mode = "pass"
                body = b'{"error":{"code":"unavailable","message":"test proxy"}}'
                head = (
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    f"Retry-After: {self.retry_after}\r\nConnection: close\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                conn.sendall(head.encode() + body)
                return
            answer = self._forward(request)
            if once:
                self.mode = "pass"
                return  # the server applied it; the client never hears back
            conn.sendall(answer)

    def _forward(self, request: bytes) -> bytes:
        head, body = request.split(b"\r\n\r\n", 1)
        lines = [h for h in head.split(b"\r\n") if not h.lower().startswith(b"connection:")]
        request = b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n" + body
        with socket.create_connection(self.upstream) as up:
            up.sendall(request)
            chunks = []
            while True:
                data = up.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)


def _read_request(conn: socket.socket) -> Optional[bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for h in head.split(b"\r\n")[1:]:
        name, _, value = h.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    p = Proxy(server.url)
    yield p
    p.close()


def dead_url() -> str:
    """A URL nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
