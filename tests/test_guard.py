"""Issue 38: what the servers answer and to whom (`zfnet.pipelines.guard`), and who runs on the explorer's model next
(`zfnet.pipelines.fair`). The guard is driven here as ASGI, request by request, in front of a small app that
records what reached it; `tests/test_explore.py` drives the real servers (a foreign Host, a foreign Origin, no
token, a dot-path, 20 queued jobs)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from zfnet.pipelines.fair import Busy, JobBook, ModelLock
from zfnet.pipelines.guard import Guard, cookie_name

PORT = 8123


def app_and_calls():
    calls: list[tuple[str, str]] = []

    async def app(scope, receive, send):
        calls.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app, calls


def call(app, method: str = "GET", path: str = "/", headers: dict | None = None, query: str = "", port: int = PORT):
    """One request through `app` as uvicorn would hand it over; (status, headers, body)."""
    heads = {"host": f"127.0.0.1:{port}", **(headers or {})}
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in heads.items() if v is not None],
             "server": ("127.0.0.1", port), "client": ("127.0.0.1", 5555)}  # fmt: skip
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start.get("headers", [])}, body


def test_only_the_servers_own_host_and_port_are_answered():
    inner, calls = app_and_calls()
    app = Guard(inner, "127.0.0.1")
    for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}", f"LOCALHOST:{PORT}"):
        assert call(app, headers={"host": host})[0] == 200, host
    for host in ("evil.example.com", f"evil.example.com:{PORT}", "127.0.0.1:9999", f"127.0.0.2:{PORT}", None):
        status, _, body = call(app, path="/api/info", headers={"host": host})
        assert status == 421 and body.startswith(b'{"error": "this server answers only for'), host
    assert len(calls) == 4
    named = Guard(inner, "10.1.2.3")  # --host names another address: that one and loopback
    assert call(named, headers={"host": f"10.1.2.3:{PORT}"})[0] == 200
    assert call(named, headers={"host": f"10.1.2.4:{PORT}"})[0] == 421


def test_a_state_changing_request_from_another_origin_is_refused_and_reaches_nothing():
    inner, calls = app_and_calls()
    app = Guard(inner, "127.0.0.1")
    for headers in ({"origin": "http://evil.example.com"}, {"referer": "http://evil.example.com/page"},
                    {"origin": "null"}, {"origin": f"http://127.0.0.1:{PORT + 1}"}):  # fmt: skip
        status, _, body = call(app, "POST", "/api/upload", headers)
        assert status == 403 and b"another site" in body, headers
    assert calls == []
    for headers in ({}, {"origin": f"http://127.0.0.1:{PORT}"}, {"referer": f"http://localhost:{PORT}/#image=d1"}):
        assert call(app, "POST", "/api/upload", headers)[0] == 200
    assert call(app, "GET", "/api/info", {"origin": "http://evil.example.com"})[0] == 200  # reads: the Host rule
    assert len(calls) == 4


def test_the_token_by_url_sets_a_cookie_and_nothing_without_it_is_answered():
    inner, calls = app_and_calls()
    app = Guard(inner, "127.0.0.1", token="s3cret")
    status, _, body = call(app, path="/api/info")
    assert status == 403 and b"needs its token" in body and b"--no-token" in body
    assert call(app, path="/", query="token=wrong")[0] == 403
    assert call(app, path="/", headers={"x-zfnet-token": "s3crét"})[0] == 403  # not ASCII: refused, not an error
    assert call(app, path="/api/info", headers={"cookie": f"{cookie_name(PORT + 1)}=s3cret"})[0] == 403
    assert calls == []
    status, headers, _ = call(app, path="/", query="token=s3cret")
    assert status == 200
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{cookie_name(PORT)}=s3cret;") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert call(app, path="/api/info", headers={"cookie": f"a=b; {cookie_name(PORT)}=s3cret"})[0] == 200
    assert call(app, path="/api/info", headers={"x-zfnet-token": "s3cret"})[0] == 200
    assert len(calls) == 3


def test_no_dot_path_is_served():
    inner, calls = app_and_calls()
    app = Guard(inner, "127.0.0.1")
    for path in ("/atlas/.scan-state.safetensors", "/.git/config", "/static/.env", "/a/./b", "/a/../b"):
        assert call(app, path=path)[0] == 404, path
    assert calls == [] and call(app, path="/atlas/maps.v1/x.png")[0] == 200


def test_interactive_requests_go_before_a_job_between_its_chunks():
    """A job holds the model; an interactive request that arrives waits only until the job's next chunk boundary,
    and the job goes on after it; a second job waits while an interactive request waits."""
    lock, order = ModelLock(), []
    in_job, asked = threading.Event(), threading.Event()

    def job():
        with lock.job():
            order.append("job chunk 1")
            in_job.set()
            asked.wait(10)
            while lock._waiting == 0:  # until the interactive request waits for the model (no race on a clock)
                time.sleep(0.001)
            lock.between_chunks()
            order.append("job chunk 2")

    def interactive():
        in_job.wait(10)
        asked.set()
        with lock:
            order.append("interactive")

    threads = [threading.Thread(target=job), threading.Thread(target=interactive)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order == ["job chunk 1", "interactive", "job chunk 2"]
    lock.between_chunks()  # not held and nobody waiting: returns at once


def test_jobs_are_bounded_per_client_and_in_total_and_stop_when_cancelled_or_abandoned():
    book = JobBook(per_client=2, total=3, abandon=0.2)
    a1, _ = book.admit("a1", "A"), book.admit("a2", "A")
    with pytest.raises(Busy, match="2 jobs of yours are already queued"):
        book.admit("a3", "A")
    book.admit("b1", "B")
    with pytest.raises(Busy, match="the explorer has 3 jobs"):
        book.admit("c1", "C")
    a1["result"] = {}  # a finished job frees its place
    book.admit("a3", "A")
    state = book.jobs["a2"]
    assert book.stop_reason(state) is None
    state["cancelled"] = True
    assert book.stop_reason(state) == "the job was cancelled"
    fresh = book.jobs["b1"]
    time.sleep(0.25)
    assert book.stop_reason(fresh).startswith("the job was abandoned")
    book.get("b1")  # a poll keeps it
    assert book.stop_reason(fresh) is None


def test_a_job_waits_the_grace_after_an_interactive_request():
    """A user's requests come in bursts: after an interactive request ends, a job takes the model no sooner than
    `grace` later (a lower bound only: the clock cannot make it earlier)."""
    lock = ModelLock(grace=0.2)
    with lock:
        pass
    ended = time.monotonic()
    with lock.job():
        assert time.monotonic() - ended >= 0.2 - 1e-3


def test_uploads_are_kept_per_client_the_oldest_dropped():
    """Issue 38: each client keeps its `uploads_per_client` newest uploads; another client's are not touched."""
    import io

    import numpy as np
    from PIL import Image

    import zfnet
    from zfnet.pipelines.explore import ExploreLimits, Explorer
    from zfnet.pretrained import open_embedded

    def png(v: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((28, 28), v, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    import torch

    with Explorer(open_embedded(), limits=ExploreLimits(uploads_per_client=2)) as ex, torch.no_grad():  # as served
        a = [ex.upload(png(v), "a.png", "A")["key"] for v in (10, 20, 30)]
        b = ex.upload(png(40), "b.png", "B")["key"]
        with pytest.raises(zfnet.UsageError, match="^no image"):
            ex.predict(a[0])
        for key in (*a[1:], b):
            assert ex.predict(key)["top"]
