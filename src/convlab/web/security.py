"""Request guard for the teach app (pure ASGI middleware, checked on every request).

- Host: only the names the server was started for (stops DNS-rebinding pages from
  reaching a loopback server under a foreign name).
- Origin: a request a browser sends from another web origin is refused, and so is
  one marked `Sec-Fetch-Site: cross-site`.
- Token: when set (always for a non-loopback bind), every request needs it, as
  `Authorization: Bearer TOKEN`, the `convlab_token` cookie, or `?token=TOKEN` once
  (which sets the cookie).
- Size: request bodies over the byte limit are refused before they are read.
"""
from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs

__all__ = ["Guard", "COOKIE"]

COOKIE = "convlab_token"
_BODY_METHODS = {"POST", "PUT", "PATCH"}


async def _refuse(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Wraps an ASGI app. `hosts`: allowed Host header values (None: any);
    `token`: the access token (None: no token); `max_body`: bytes per request."""

    def __init__(self, app, *, hosts: set[str] | None, token: str | None, max_body: int) -> None:
        self.app, self.hosts, self.token, self.max_body = app, hosts, token, max_body

    def _token_ok(self, headers: dict[str, str], query: dict) -> tuple[bool, bool]:
        """(allowed, came from the query string)."""
        if self.token is None:
            return True, False
        given = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == COOKIE:
                given.append(v)
        from_query = query.get("token", [])
        ok = any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given)
        if not ok and from_query:
            return hmac.compare_digest(from_query[0].encode(), self.token.encode()), True
        return ok, False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.hosts is not None and host not in self.hosts:
            return await _refuse(send, 421, f"unknown Host header {host!r}; this server answers "
                                 f"to: {', '.join(sorted(self.hosts))}")
        origin = headers.get("origin")
        scheme = scope.get("scheme", "http").replace("ws", "http")
        if origin is not None and origin != f"{scheme}://{host}":
            return await _refuse(send, 403, f"requests from other web origins are refused "
                                 f"(Origin {origin!r})")
        if headers.get("sec-fetch-site") == "cross-site":
            return await _refuse(send, 403, "cross-site requests are refused")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ok, from_query = self._token_ok(headers, query)
        if not ok:
            return await _refuse(send, 401, "this server needs its access token: open the URL "
                                 "`convlab teach` printed, or send 'Authorization: Bearer TOKEN'",
                                 [(b"www-authenticate", b"Bearer")])
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            length = headers.get("content-length")
            if length is None and "chunked" in headers.get("transfer-encoding", ""):
                return await _refuse(send, 411, "send a Content-Length with the request body")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                return await _refuse(send, 413, f"request body of {length} bytes is over the "
                                     f"limit of {self.max_body:,} bytes")
        if from_query and scope["type"] == "http":
            cookie = (f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict").encode()

            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"set-cookie", cookie)]}
                await send(message)
            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)
