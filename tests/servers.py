"""A server started as a user starts it (`python -m zfnet serve|explore ... --port 0`), which a test cannot hang on
(issue 41): both output streams are read as they come on their own threads, so no pipe fills up unread; the URL is
awaited with a deadline; Ctrl-C stops it with a deadline, and a server that does not stop is killed and the test
fails with everything it printed."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URL = re.compile(r"(http://(?:127\.0\.0\.1|\[::1\]|localhost|0\.0\.0\.0):\d+/)(?:\?token=(\w+))?")
TOKENS: dict[str, str] = {}  # a served URL -> the token its server printed (issue 38); `headers` sends it


class ServerProcess:
    def __init__(self, *args: str, env: dict | None = None, port: bool = True) -> None:
        e = dict(os.environ, ZFNET_PROGRESS="0", PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zfnet", *args, *(["--port", "0"] if port else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=e,
        )
        self.token: str | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()  # stdout and stderr lines as they come; None: closed
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str | re.Pattern, timeout: float = 300) -> re.Match:
        """The first line (either stream) matching `pattern`, read within `timeout` seconds; else the server is
        killed and the test fails with its output."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline, closed = time.monotonic() + timeout, 0
        while closed < 2:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                closed += 1
            elif found := rx.search(line):
                return found
        self.kill()
        raise AssertionError(f"no line matching {rx.pattern!r} within {timeout} s\n{self.output()}")

    def url(self, timeout: float = 300) -> str:
        """The URL the server printed, without its token (kept in `self.token` and `TOKENS`)."""
        found = self.wait_for(URL, timeout)
        self.token = found.group(2)
        if self.token:
            TOKENS[found.group(1)] = self.token
        return found.group(1)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        """Send `sig` (Ctrl-C by default) and wait for the exit status; a server still running after `timeout`
        seconds is killed and the test fails with its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the server did not stop within {timeout} s\n{self.output()}") from None
        for t in self._readers:
            t.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for t in self._readers:
            t.join(timeout=10)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def output(self) -> str:
        return f"stdout:\n{''.join(self._out)[-3000:]}\nstderr:\n{self.stderr[-3000:]}"

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()  # whatever happened in the test, nothing is left running


def headers(url: str) -> dict[str, str]:
    """The token header for a URL of a server started here (none for a server without one)."""
    for base, token in TOKENS.items():
        if url.startswith(base):
            return {"X-Zfnet-Token": token}
    return {}


def opened(url: str) -> str:
    """The URL a user opens first: with its server's token, as the server printed it."""
    token = headers(url).get("X-Zfnet-Token")
    return f"{url}?token={token}" if token else url
