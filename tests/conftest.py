"""Shared test fixtures. Tests run on CPU, with a fixed seed, progress bars off."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each, no
    os.environ["OMP_NUM_THREADS"] = "1"  # oversubscription (the runs they start inherit it)
    torch.set_num_threads(1)
os.environ.setdefault("ZFNET_PROGRESS", "0")
os.environ.setdefault("ZFNET_OFFLINE", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("ZFNET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def hook_count(model: torch.nn.Module) -> int:
    """Every forward/backward hook on every module of `model`."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


def run_cli(*args: str, env: dict | None = None, timeout: int = 600):
    """Run `python -m zfnet ARGS` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    e = dict(os.environ, ZFNET_PROGRESS="0", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "zfnet", *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=REPO
    )


def torchrun_errors(stderr: str) -> str:
    """What the processes of a failed torchrun run said, without the launcher's own log and traceback
    (which otherwise push the processes' lines out of an assertion message)."""
    own = [l for l in stderr.splitlines() if not l.startswith(("W1", "E1", "I1", "  ", "Traceback", "torch."))]
    return "\n".join(own)[-4000:]


CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)),
    reason="needs Debian chromium and chromium-driver (installed by `make test`)",
)


@pytest.fixture(scope="session")
def _chromium():
    """One headless Chromium for the session (starting one takes seconds)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.fixture
def browser(_chromium):
    """The session's Chromium on a blank page with no earlier page's console messages; left on a blank page, so
    that nothing a test's page still loads can reach the next test (a server a fixture stops refuses it, and the
    browser logs that as an error)."""
    _chromium.get("about:blank")
    _chromium.get_log("browser")
    yield _chromium
    _chromium.get("about:blank")


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """`write(prefix, source)` puts `source` in a module of the test's folder, importable as `--model name:callable`
    from the working directory (made the test's folder) or PYTHONPATH; returns its name. Every module written is
    forgotten after the test."""
    written: list[str] = []

    def write(prefix: str, source: str) -> str:
        name = f"{prefix}_{os.getpid()}"
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in written:
        sys.modules.pop(name, None)


def noise_photos(folder, n: int, size: int = 48) -> None:
    """`n` RGB photos of seeded uniform noise (`folder`/00.png, 01.png, ...): a folder of images for the commands
    that open a user's model on photos."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(g.integers(0, 256, (size, size, 3)).astype(np.uint8)).save(folder / f"{k:02d}.png")
