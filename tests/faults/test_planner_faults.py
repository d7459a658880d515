"""The LLM planner against hostile or broken OpenAI-compatible servers (raw sockets on 127.0.0.1): each fault
gets its own message naming the server and model, within the request's one deadline."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from r2moe_core.compose.planning.llm_planner import LLMPlanner
from r2moe_core.errors import InvalidInputError, PlannerCancelledError

KEY = "sk-test-secret-0123456789"
PROMPT, TOKENS = "<dog1> and <cat1> on a beach", ["<dog1>", "<cat1>"]
GOOD = {"background": "a beach", "regions": [
    {"prompt": "a <dog1> dog", "box": [0.05, 0.1, 0.45, 0.9], "tokens": ["<dog1>"]},
    {"prompt": "a <cat1> cat", "box": [0.55, 0.1, 0.95, 0.9], "tokens": ["<cat1>"]}]}


def completion(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


def response(status: int, body: bytes, content_type: str = "application/json", reason: str = "X") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


Behaviour = Callable[[socket.socket, bytes], None]


class RawServer:
    """Accepts on 127.0.0.1 and hands each connection, with the request it read, to `behaviour`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour, self.requests = behaviour, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append(head + b"\r\n\r\n" + body)
            with contextlib.suppress(OSError):  # the client gave up: what the deadline tests want
                self.behaviour(conn, head + b"\r\n\r\n" + body)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@pytest.fixture
def serve(monkeypatch) -> Iterator[Callable[[Behaviour], RawServer]]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("R2MOE_FAULT_KEY", KEY)
    servers: list[RawServer] = []

    def start(behaviour: Behaviour) -> RawServer:
        servers.append(RawServer(behaviour))
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


def plan(url: str, timeout_s: float = 1.5, **kwargs) -> tuple[str, float]:
    """The planner's error message and the seconds until it came."""
    started = time.monotonic()
    with pytest.raises((InvalidInputError, PlannerCancelledError)) as failure:
        LLMPlanner(url, "fault-model", api_key_env="R2MOE_FAULT_KEY", timeout_s=timeout_s, **kwargs).plan(
            PROMPT, TOKENS, 512, 512, 0)
    return str(failure.value), time.monotonic() - started


def test_refused_connection():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    message, seconds = plan(f"http://127.0.0.1:{port}/v1")
    assert f"nothing accepts connections at 127.0.0.1:{port}" in message and "Start the server" in message
    assert "fault-model" in message and seconds < 1.0


@pytest.mark.parametrize("trickle", ["never answers", "headers", "body"])
def test_the_deadline_covers_the_whole_request_however_slowly_the_server_trickles(serve, trickle):
    def slow(conn: socket.socket, _: bytes) -> None:
        if trickle == "never answers":
            time.sleep(5)
            return
        payload = response(200, completion(json.dumps(GOOD)))
        head_end = payload.index(b"\r\n\r\n") + 4
        start = 0 if trickle == "headers" else head_end
        conn.sendall(payload[:start])
        for i in range(start, len(payload)):  # one byte every 0.2 s: each read is quick, the whole is not
            conn.sendall(payload[i : i + 1])
            time.sleep(0.2)

    srv = serve(slow)
    message, seconds = plan(srv.url, timeout_s=1.5)
    assert "did not answer within 1.5 s (connect + answer)" in message and "raise timeout_s" in message
    assert 1.4 < seconds < 2.5, seconds


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (response(200, b"{'background': 'single quotes'}"), "is not JSON (it starts \"{'background'"),
        (response(200, b"<html><head><title>Welcome to nginx!</title></head><body>hi</body></html>", "text/html"),
         "a web page (titled 'Welcome to nginx!')"),
        (response(500, b"model worker crashed: CUDA error", "text/plain"), "HTTP 500: model worker crashed"),
        (response(502, b"<html><title>502 Bad Gateway</title>" + b"x" * 9000 + b"</html>", "text/html"),
         "HTTP 502"),
        (response(200, b'{"object": "list", "data": []}'), "no choices[0].message.content"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", "not JSON"),
        (b"", "closed the connection"),
    ],
    ids=["not-json", "html", "500-text", "502-html", "no-choices", "empty-close", "close-without-answer"],
)
def test_broken_answers_get_their_own_message(serve, answer, expected):
    srv = serve(lambda conn, _: conn.sendall(answer))
    message, seconds = plan(srv.url)
    assert expected in message, message
    assert message.startswith(f"LLM planner at {srv.url} (model 'fault-model')") and seconds < 1.0
    assert len(message) < 700, "a bad answer is quoted short"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_huge_answer_is_cut_off_without_being_read_whole(serve, framing):
    def huge(conn: socket.socket, _: bytes) -> None:
        chunk = b"x" * 65536
        if framing == "content-length":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
            for _ in range(763):
                conn.sendall(chunk)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(763):
                conn.sendall(b"10000\r\n" + chunk + b"\r\n")

    srv = serve(huge)
    message, seconds = plan(srv.url, timeout_s=20)
    assert "A layout answer is a few KB" in message and seconds < 10, (message, seconds)


def test_a_server_that_echoes_the_key_never_gets_it_into_a_message_or_a_log(serve, caplog):
    def echo(conn: socket.socket, request: bytes) -> None:
        headers = request.split(b"\r\n\r\n")[0].decode()
        conn.sendall(response(400, json.dumps({"error": {"message": f"bad request; you sent {headers}"}}).encode()))

    srv = serve(echo)
    with caplog.at_level(logging.DEBUG):
        message, _ = plan(srv.url)
    assert KEY.encode() in srv.requests[0], "the key is sent to the server"
    assert KEY not in message and KEY not in caplog.text
    assert "HTTP 400" in message or "rejected the request" in message


def test_cancel_stops_a_request_in_flight_and_its_retries(serve):
    srv = serve(lambda conn, _: time.sleep(10))
    pressed = time.monotonic() + 0.5
    message, seconds = plan(srv.url, timeout_s=30, should_stop=lambda: time.monotonic() > pressed)
    assert "cancelled" in message and seconds < 1.0, (message, seconds)
    time.sleep(0.5)
    assert len(srv.requests) == 1, "no retry after Cancel"


def test_invalid_answers_stop_retrying_when_cancel_is_pressed(serve):
    srv = serve(lambda conn, _: conn.sendall(response(200, completion("no layout here"))))
    message, _ = plan(srv.url, timeout_s=5, should_stop=lambda: len(srv.requests) >= 1)
    assert "cancelled" in message and len(srv.requests) == 1
