"""One JSON POST over HTTP(S) with a single deadline for the whole exchange, a cap on what is read, and a stop
check, for the LLM planner.

Why not an HTTP library: their timeouts apply per socket read, so a server that trickles a byte every 2 s holds a
3 s request for ever; they read an error body whole, however large; and nothing stops a request in flight. Here
every socket step is non-blocking and waits in short slices, so the deadline and Cancel act within ~0.1 s, and
the reply is refused as soon as it outgrows the cap. Proxies from the usual environment variables (`https_proxy`,
`http_proxy`, `no_proxy`) are honoured; loopback addresses never go through one.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import select
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

SLICE_S = 0.1  # longest single wait: how late a deadline or a Cancel can be noticed
MAX_HEADER_BYTES = 64 * 1024
_CONNECT_PENDING = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, 10035}  # 10035: WSAEWOULDBLOCK
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}

FailureKind = str  # "refused" | "unreachable" | "tls" | "timeout" | "cancelled" | "broken" | "too_large"


class HTTPExchangeError(Exception):
    """The exchange did not produce a reply; `kind` says why (see FailureKind), the text says it for a person."""

    def __init__(self, kind: FailureKind, text: str) -> None:
        super().__init__(text)
        self.kind = kind


@dataclass(frozen=True)
class HTTPReply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # with query


class _Deadline:
    """One clock for connect, TLS, send and receive; each wait returns a slice or raises."""

    def __init__(self, seconds: float, should_stop: Callable[[], bool] | None) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.should_stop = should_stop

    def slice(self) -> float:
        if self.should_stop is not None and self.should_stop():
            raise HTTPExchangeError("cancelled", "cancelled")
        left = self.end - time.monotonic()
        if left <= 0:
            raise HTTPExchangeError("timeout", f"no complete answer within {self.seconds:g} s")
        return min(SLICE_S, left)


def post_json(
    url: str,
    payload: Any,
    headers: Mapping[str, str],
    deadline_s: float,
    max_bytes: int,
    should_stop: Callable[[], bool] | None = None,
) -> HTTPReply:
    """POST `payload` as JSON; the reply (any status) or HTTPExchangeError, all within `deadline_s` seconds."""
    target = _split(url)
    deadline = _Deadline(deadline_s, should_stop)
    proxy = _proxy_for(target)
    hop = proxy or target
    sock = _connect(hop.host, hop.port, deadline)
    try:
        if proxy is not None and target.scheme == "https":
            _tunnel(sock, target, proxy, deadline)
        if target.scheme == "https":
            sock = _start_tls(sock, target.host, deadline)
        body = json.dumps(payload, ensure_ascii=False).encode()
        path = f"http://{_authority(target)}{target.path}" if proxy is not None and target.scheme == "http" else (
            target.path)
        lines = [f"POST {path} HTTP/1.1", f"Host: {_authority(target)}", "Content-Type: application/json",
                 "Accept: application/json", "Accept-Encoding: identity", "Connection: close",
                 f"Content-Length: {len(body)}"]
        if proxy is not None and target.scheme == "http" and proxy.path:
            lines.append(f"Proxy-Authorization: {proxy.path}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        _send_all(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, deadline)
        return _receive(sock, deadline, max_bytes)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _split(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HTTPExchangeError("unreachable", f"not an http(s) URL: {url[:200]!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, parts.hostname, port, path)


def _authority(target: _Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _proxy_for(target: _Target) -> _Target | None:
    """The proxy to use, with its Proxy-Authorization header value (if any) carried in `path`."""
    if target.host in _LOOPBACK or target.host.startswith("127."):
        return None
    address = urllib.request.getproxies().get(target.scheme)
    if not address or urllib.request.proxy_bypass(target.host):
        return None
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if not parts.hostname:
        return None
    auth = ""
    if parts.username:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    return _Target("http", parts.hostname, parts.port or 8080, auth)


def _resolve(host: str, port: int, deadline: _Deadline) -> list[tuple[Any, ...]]:
    pool = ThreadPoolExecutor(max_workers=1)  # getaddrinfo cannot be interrupted: wait for it in slices
    try:
        future = pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        while True:
            try:
                return future.result(timeout=deadline.slice())
            except FutureTimeoutError:
                continue
            except socket.gaierror as err:
                raise HTTPExchangeError("unreachable", f"cannot resolve host {host!r} ({err.strerror})") from None
    finally:
        pool.shutdown(wait=False)


def _connect(host: str, port: int, deadline: _Deadline) -> socket.socket:
    failure = HTTPExchangeError("unreachable", f"no address for {host}")
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            code = sock.connect_ex(address)
            while code in _CONNECT_PENDING:
                _, writable, _ = select.select([], [sock], [], deadline.slice())
                if writable:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                return sock
            if code == errno.ECONNREFUSED:
                failure = HTTPExchangeError("refused", f"nothing accepts connections at {host}:{port} (refused)")
            else:
                reason = errno.errorcode.get(code, code)
                failure = HTTPExchangeError("unreachable", f"cannot reach {host}:{port} ({reason})")
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise failure


def _start_tls(sock: socket.socket, host: str, deadline: _Deadline) -> ssl.SSLSocket:
    secure = ssl.create_default_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    while True:
        try:
            secure.do_handshake()
            return secure
        except ssl.SSLWantReadError:
            select.select([secure], [], [], deadline.slice())
        except ssl.SSLWantWriteError:
            select.select([], [secure], [], deadline.slice())
        except ssl.SSLCertVerificationError as err:
            raise HTTPExchangeError("tls", f"its TLS certificate was refused ({err.verify_message})") from None
        except (ssl.SSLError, OSError) as err:
            raise HTTPExchangeError("tls", f"the TLS handshake failed ({err})") from None


def _send_all(sock: socket.socket, data: bytes, deadline: _Deadline) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
            view = view[sent:]
        except (BlockingIOError, ssl.SSLWantWriteError):
            select.select([], [sock], [], deadline.slice())
        except ssl.SSLWantReadError:
            select.select([sock], [], [], deadline.slice())
        except OSError as err:
            raise HTTPExchangeError("broken", f"the connection broke while sending ({err.strerror or err})") from None
        deadline.slice()


def _recv_some(sock: socket.socket, deadline: _Deadline) -> bytes:
    """Next bytes (b"" at the end of the stream), waiting in slices."""
    while True:
        try:
            return sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            select.select([sock], [], [], deadline.slice())
        except ssl.SSLWantWriteError:
            select.select([], [sock], [], deadline.slice())
        except OSError as err:
            raise HTTPExchangeError("broken", f"the connection broke ({err.strerror or err})") from None
        deadline.slice()


def _tunnel(sock: socket.socket, target: _Target, proxy: _Target, deadline: _Deadline) -> None:
    lines = [f"CONNECT {target.host}:{target.port} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    if proxy.path:
        lines.append(f"Proxy-Authorization: {proxy.path}")
    _send_all(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), deadline)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = _recv_some(sock, deadline)
        if not chunk or len(buffer) > MAX_HEADER_BYTES:
            raise HTTPExchangeError("broken", f"the proxy {proxy.host}:{proxy.port} closed the tunnel request")
        buffer += chunk
    status = buffer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    if len(status.split()) < 2 or status.split()[1] != "200":
        where = f"{proxy.host}:{proxy.port}"
        raise HTTPExchangeError("unreachable", f"the proxy {where} refused the tunnel ({status[:100]})")


def _receive(sock: socket.socket, deadline: _Deadline, max_bytes: int) -> HTTPReply:
    buffer = b""
    status: int | None = None
    headers: dict[str, str] = {}
    body_start = 0
    while True:
        if status is None:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                status, headers = _parse_head(buffer[:end])
                if 100 <= status < 200:  # an interim reply: the real one follows
                    buffer, status = buffer[end + 4:], None
                    continue
                body_start = end + 4
            elif len(buffer) > MAX_HEADER_BYTES:
                raise HTTPExchangeError("broken", "the answer's headers are over 64 KB: this is not an API server")
        if status is not None:
            body, complete = _body_so_far(buffer[body_start:], headers)
            if complete:
                return HTTPReply(status, headers, body)
            if len(buffer) - body_start > max_bytes:
                if status >= 400:  # the status says enough; its text is only quoted, shortened
                    return HTTPReply(status, headers, body[:4096])
                raise HTTPExchangeError("too_large", f"the answer is over {max_bytes // 1024} KB")
        chunk = _recv_some(sock, deadline)
        if not chunk:
            if status is None:
                if not buffer:
                    raise HTTPExchangeError("broken", "it closed the connection without answering")
                raise HTTPExchangeError("broken", "it closed the connection in the middle of the answer's headers")
            body, complete = _body_so_far(buffer[body_start:], headers, closed=True)
            if not complete:
                raise HTTPExchangeError("broken", "it closed the connection before the answer was complete")
            return HTTPReply(status, headers, body)
        buffer += chunk


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1", "replace").split("\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HTTPExchangeError("broken", f"it did not answer in HTTP (first line {lines[0][:80]!r})")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _body_so_far(data: bytes, headers: Mapping[str, str], closed: bool = False) -> tuple[bytes, bool]:
    """The body decoded so far, and whether it is complete (chunked, Content-Length, or up to the close)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _dechunk(data)
    length = headers.get("content-length", "")
    if length.isdigit():
        return data[: int(length)], len(data) >= int(length)
    return data, closed


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out, position = bytearray(), 0
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return bytes(out), False
        size_text = data[position:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HTTPExchangeError("broken", "its chunked answer is malformed") from None
        if size == 0:
            return bytes(out), True  # trailers, if any, carry nothing we need
        start = line_end + 2
        if len(data) < start + size + 2:
            out += data[start : start + size]
            return bytes(out), False
        out += data[start : start + size]
        position = start + size + 2
