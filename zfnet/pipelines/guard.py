"""What a zfnet server answers, and to whom (issue 38): `zfnet explore` and `zfnet serve` behind one ASGI
layer.

- **Host**: only requests whose Host header names the address and port the server listens on (127.0.0.1,
  localhost and [::1] on loopback, or what --host names): a page on another site that rebinds its DNS name to
  127.0.0.1 sends its own name, and is refused (421).
- **Origin**: a request that changes state (not GET, HEAD or OPTIONS) whose Origin - or, without one, Referer - is
  another origin than the server's is refused (403): a cross-site form cannot queue work or upload images.
- **Token** (the explorer, unless --no-token): a random token in the printed URL (as Jupyter does). The first page
  load with `?token=` sets a cookie (HttpOnly, SameSite=Strict, named by the port), which the page's requests
  carry; a script can send the `X-Zfnet-Token` header instead. Anything else is refused (403).
- **Dot-paths**: no path with a component starting with "." is served (404): the atlas's `.scan-state.safetensors`
  and any other hidden file stay hidden.

Refusals are one line: JSON `{"error": ...}` under /api/, plain text elsewhere.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

HEADER = "x-zfnet-token"
SAFE = ("GET", "HEAD", "OPTIONS")
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def new_token() -> str:
    return secrets.token_hex(24)


def cookie_name(port: int) -> str:
    """Cookies are shared by every port of a host: each server keeps its own."""
    return f"zfnet-token-{port}"


def _names(host: str) -> tuple[str, ...]:
    """The host names a request may use for a server listening on `host`."""
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        return LOOPBACK
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return (shown, *LOOPBACK)


class Guard:
    """ASGI middleware in front of `app` for a server listening on `host` (its port read from each request's
    connection): the Host, Origin, token and dot-path rules above. `token` None: no token asked (`zfnet serve`,
    `--no-token`)."""

    def __init__(self, app: Callable[..., Awaitable[Any]], host: str, token: str | None = None) -> None:
        self.app, self.names, self.token = app, _names(host), token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        port = int((scope.get("server") or ("", 0))[1] or 0)
        allowed = {f"{n}:{port}" for n in self.names} | (set(self.names) if port == 80 else set())
        path = scope.get("path", "/")
        host = headers.get("host", "")
        if host.lower() not in allowed:
            first = sorted(allowed)[0]
            return await _refuse(send, path, 421, f"this server answers only for {first} (not Host {host!r}); "
                                                  f"open http://{first}/")  # fmt: skip
        if any(part.startswith(".") for part in path.split("/")):
            return await _refuse(send, path, 404, "not found (hidden files are not served)")
        if scope.get("method", "GET") not in SAFE:
            origin = headers.get("origin") or _origin_of(headers.get("referer"))
            if origin is not None and origin.lower() not in {f"http://{a}" for a in allowed}:
                return await _refuse(send, path, 403, f"a request from another site ({origin}) is refused; "
                                                      "use the page this server serves")  # fmt: skip
        cookie = None
        if self.token is not None:
            given = _token_of(scope, headers, cookie_name(port))
            if given is None or not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
                return await _refuse(send, path, 403, "this explorer needs its token: open the URL it printed "
                                                      "(with ?token=...), or start it with --no-token")  # fmt: skip
            cookie = f"{cookie_name(port)}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        if cookie is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _origin_of(referer: str | None) -> str | None:
    if not referer:
        return None
    u = urlsplit(referer)
    return f"{u.scheme}://{u.netloc}" if u.scheme and u.netloc else "null"


def _token_of(scope, headers: dict[str, str], name: str) -> str | None:
    """The token a request carries: its header, its cookie, or `?token=` in its URL."""
    if HEADER in headers:
        return headers[HEADER]
    for part in headers.get("cookie", "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query["token"][0] if query.get("token") else None


async def _refuse(send, path: str, status: int, line: str) -> None:
    api = path.startswith("/api/")
    body = json.dumps({"error": line}).encode() if api else (line + "\n").encode()
    kind = b"application/json" if api else b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


__all__ = ["HEADER", "Guard", "cookie_name", "new_token"]
