"""The ASGI guard of ``c4s serve``: Host allow-list, token and body size, before any route runs."""

import hashlib
import hmac
import ipaddress
import json

from .page import LOGIN_HTML

__all__ = ["Guard", "COOKIE", "LOOPBACK_NAMES", "is_loopback", "session_value"]

COOKIE = "c4s_session"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_LOOPBACK_NAMES = LOOPBACK_NAMES


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual names of localhost."""
    h = host.strip("[]").lower()
    if h in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


class _TooLarge(Exception):
    pass


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"c4s-serve-session", hashlib.sha256).hexdigest()


class Guard:
    """Pure ASGI middleware: Host allow-list (DNS rebinding), token, upload size."""

    OPEN_PATHS = ("/login",)

    def __init__(self, app, token: str | None, max_body: int, allowed_hosts: set[str] | None):
        self.app = app
        self.token = token
        self.session = session_value(token) if token else None
        self.max_body = int(max_body)
        self.allowed_hosts = allowed_hosts

    def _authorised(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-c4s-token", "")
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        from http.cookies import SimpleCookie

        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is just not a session
            return False
        got = jar.get(COOKIE)
        return bool(got) and hmac.compare_digest(got.value.encode(), self.session.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]").lower() not in self.allowed_hosts:
                return await _plain(send, 400, f"Host {host!r} is not served here (allowed: "
                                    f"{', '.join(sorted(self.allowed_hosts))})")
        if scope["type"] != "http":
            return await _plain(send, 404, "no websocket here")
        if not self._authorised(headers) and scope["path"] not in self.OPEN_PATHS:
            if scope["path"] == "/" and "text/html" in headers.get("accept", ""):
                return await _send(send, 401, LOGIN_HTML.encode(), "text/html; charset=utf-8")
            return await _plain(send, 401, "this server needs a token: send 'Authorization: Bearer TOKEN' or "
                                "'X-C4S-Token: TOKEN', or sign in on the page")
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await _plain(send, 400, "invalid Content-Length")
            if too_big:
                return await _plain(send, 413, f"request body of {length} bytes is over the upload limit of "
                                    f"{self.max_body} bytes")
        seen, started, exceeded = 0, False, False
        too_large = f"request body is over the upload limit of {self.max_body} bytes"

        async def counted_receive():
            nonlocal seen, exceeded
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    exceeded = True
                    raise _TooLarge
            return msg

        async def tracked_send(msg):
            nonlocal started
            if exceeded:  # the app answered the cut-off body (FastAPI: "error parsing the body"): say why
                if msg["type"] == "http.response.start" and not started:
                    started = True
                    await _plain(send, 413, too_large)
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _plain(send, 413, too_large)


async def _send(send, status: int, body: bytes, ctype: str, extra: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def _plain(send, status: int, detail: str) -> None:
    await _send(send, status, json.dumps({"detail": detail}).encode(), "application/json")
