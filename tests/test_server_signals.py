"""Issue 41: a Ctrl-C (or SIGTERM) at any moment of a server's life ends it, with status 0.

The signal is sent at the moments where it used to be lost or could be: right after the URL line (before uvicorn
has started; a loaded machine widens that window, so each moment is tried several times, at delays from 0 to
50 ms), while `zfnet explore` is still building the model (a user builder that waits), and once it serves. Each
server must end within a deadline; one that does not is killed and the test fails with its output
(`servers.ServerProcess`). `ZFNET_SIGNAL_REPEATS=N` repeats every moment N times (the issue's stress run)."""

from __future__ import annotations

import os
import signal
import textwrap
import urllib.request

import pytest
from servers import ServerProcess

REPEATS = int(os.environ.get("ZFNET_SIGNAL_REPEATS", "1"))
DEADLINE = 30  # seconds for a stop; a lost signal never stops, so any finite bound tells the two apart
DELAYS = [0.0, 0.001, 0.01, 0.05]  # after the URL line


def _site(tmp_path):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("<p>x</p>")
    return site


def _ended_cleanly(proc: ServerProcess, code: int) -> None:
    assert code == 0, proc.output()
    assert "Traceback" not in proc.stderr and "interrupted" not in proc.stderr, proc.output()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_at_any_moment_after_the_url(tmp_path, sig):
    import time

    site = _site(tmp_path)
    for _ in range(REPEATS):
        for delay in DELAYS:
            with ServerProcess("serve", str(site)) as proc:
                proc.url()
                time.sleep(delay)
                _ended_cleanly(proc, proc.stop(sig, timeout=DEADLINE))


def test_serve_stops_while_serving_and_a_second_signal_stops_it_at_once(tmp_path):
    site = _site(tmp_path)
    with ServerProcess("serve", str(site)) as proc:
        url = proc.url()
        with urllib.request.urlopen(url, timeout=60) as r:
            assert r.status == 200
        proc.proc.send_signal(signal.SIGINT)
        _ended_cleanly(proc, proc.stop(signal.SIGINT, timeout=DEADLINE))


def test_explore_stops_right_after_the_url():
    import time

    for _ in range(REPEATS):
        for delay in (0.0, 0.01):
            with ServerProcess("explore") as proc:
                proc.url()
                time.sleep(delay)
                _ended_cleanly(proc, proc.stop(timeout=DEADLINE))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_explore_stops_while_the_model_is_being_built(tmp_path, sig):
    """A user's builder that takes long (a large model loading): the signal lands inside it."""
    (tmp_path / "slowbuild.py").write_text(
        textwrap.dedent(
            """
            import sys, time
            from torch import nn

            def build(num_classes=10):
                print("building the model", file=sys.stderr, flush=True)
                time.sleep(120)
                return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(num_classes))
            """
        )
    )
    env = {"PYTHONPATH": str(tmp_path)}
    for _ in range(REPEATS):
        with ServerProcess("explore", "--model", "slowbuild:build", "--input-size", "32", env=env) as proc:
            proc.wait_for("building the model")
            _ended_cleanly(proc, proc.stop(sig, timeout=DEADLINE))
