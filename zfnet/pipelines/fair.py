"""Who runs on the explorer's one model next (issue 38): interactive requests before jobs, jobs a chunk at a time.

`ModelLock` is the model's lock. An interactive request (predict, a layer's maps, a projection, paint) takes it as
soon as it is free; a job (occlusion, feature visualization) takes it only when no interactive request waits or
ended less than `grace` (30 ms) ago - a user's requests come in bursts - and between its chunks (`between_chunks`,
called from the job's progress callback) hands it to any interactive request that came meanwhile. So a prediction
waits at most one chunk of a job, however many jobs are queued.

`JobBook` bounds the queue: each client (its address) may have `per_client` unfinished jobs and the server `total`;
one more is refused with `Busy` (429). A job stops at its next chunk when cancelled or when nobody has polled it for
`abandon` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import UsageError


class Busy(UsageError):
    """Too many jobs queued: answered 429 with its one line."""


class ModelLock:
    """One request at a time on the model; interactive ones first (see the module's text)."""

    def __init__(self, grace: float = 0.03) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._waiting = 0  # interactive requests waiting
        self._quiet_from = 0.0  # when the last interactive request ended
        self.grace = grace  # jobs wait this long after one: a user's next request usually follows within it

    def __enter__(self) -> ModelLock:  # `with lock:` is an interactive request
        with self._cond:
            self._waiting += 1
            try:
                while self._held:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._held = True
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._quiet_from = time.monotonic()
        self._release()

    @contextmanager
    def job(self) -> Iterator[None]:
        """Held by a job: taken only while no interactive request waits or has just ended (`grace`)."""
        with self._cond:
            self._wait_for_quiet()
            self._held = True
        try:
            yield
        finally:
            self._release()

    def between_chunks(self) -> None:
        """A job, holding the lock between two chunks: let every waiting interactive request run first (and any
        that follows within `grace`)."""
        with self._cond:
            if not self._waiting and time.monotonic() - self._quiet_from >= self.grace:
                return
            self._held = False
            self._cond.notify_all()
            self._wait_for_quiet()
            self._held = True

    def _wait_for_quiet(self) -> None:
        while True:
            left = self.grace - (time.monotonic() - self._quiet_from)
            if not (self._held or self._waiting) and left <= 0:
                return
            self._cond.wait(None if self._held or self._waiting else left)

    def _release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


class JobBook:
    """The explorer's jobs by id, each a dict (done, total, result, error; its client, when it was made, last
    polled and whether it was cancelled), bounded per client and in total."""

    def __init__(self, per_client: int = 8, total: int = 32, abandon: float = 60.0) -> None:
        self.per_client, self.total, self.abandon = per_client, total, abandon
        self.jobs: dict[str, dict] = {}

    def unfinished(self, client: str | None = None) -> int:
        return sum(
            1
            for s in self.jobs.values()
            if s["result"] is None and s["error"] is None and (client is None or s.get("client") == client)
        )

    def admit(self, job: str, client: str) -> dict:
        """A new job's state, or `Busy` when the client or the server has too many unfinished jobs."""
        if self.unfinished(client) >= self.per_client:
            raise Busy(
                f"{self.per_client} jobs of yours are already queued or running; wait for one to finish, or cancel "
                "one (DELETE /api/job/ID)"
            )
        if self.unfinished() >= self.total:
            raise Busy(f"the explorer has {self.total} jobs queued or running; try again when one has finished")
        now = time.time()
        state = {"done": 0, "total": 0, "result": None, "error": None, "client": client, "made": now, "polled": now,
                 "started": None, "cancelled": False}  # fmt: skip
        self.jobs[job] = state
        return state

    def get(self, job: str) -> dict | None:
        state = self.jobs.get(job)
        if state is not None:
            state["polled"] = time.time()
        return state

    def stop_reason(self, state: dict) -> str | None:
        """Why a job should stop at its next chunk: cancelled, or not polled for `abandon` seconds."""
        if state["cancelled"]:
            return "the job was cancelled"
        if time.time() - state["polled"] > self.abandon:
            return f"the job was abandoned (nobody asked for it for {self.abandon:g} s)"
        return None


__all__ = ["Busy", "JobBook", "ModelLock"]
