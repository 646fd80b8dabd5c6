"""`zfnet serve`: an atlas or report folder over HTTP (optional: the pages also open from the file system), on the
server `zfnet explore` uses; `run_server` starts either."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading

from ..errors import UsageError
from .args import port
from .registry import command

NEEDS_SERVER = "its server is not installed: pip install 'zfnet[explore]' (make demo installs it)"


class Lifetime:
    """Ctrl-C and SIGTERM over a server command's whole life (issue 41), from its first line until the process
    exits: one handler, installed before anything is loaded and never handed to asyncio or uvicorn.

    While the command is still starting (loading a model, binding the socket), a signal interrupts it where it is;
    once a server exists, the first signal asks it to stop gracefully and a second one stops it at once. A signal
    that arrives between the URL line and uvicorn's start is kept on the server (`should_exit`), which uvicorn reads
    right after its start-up, so no moment loses one. (Before: Python 3.11's `asyncio.Runner` took the default
    SIGINT handler over, and uvicorn's start-up swallowed the cancellation it sent.)"""

    def __init__(self) -> None:
        self.server = None  # the uvicorn server, once there is one
        self.signals = 0

    def install(self) -> Lifetime:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, sig, frame) -> None:
        self.signals += 1
        server = self.server
        if server is None:
            raise Stopped  # still starting: stop right where it is
        server.force_exit = self.signals > 1  # a second one: stop without waiting for open connections
        server.should_exit = True

    def serve(self, server, sockets: list) -> None:
        self.server = server  # from here a signal is kept on the server; before, it raised `Stopped`
        server.run(sockets=sockets)


class Stopped(KeyboardInterrupt):
    """A stop asked for while a server command was starting: the command ends with status 0."""


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped through `Lifetime` (Ctrl-C or SIGTERM as a normal end, status 0): it installs
        no signal handler of its own, and so never raises the signal again after shutting down, as uvicorn does."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Server


def run_server(app, host: str, port_: int, what: str, life: Lifetime | None = None, token: str | None = None) -> int:
    """Serve `app` (ASGI) with uvicorn on host:port (0: a free port) behind `zfnet.pipelines.guard.Guard` (Host,
    Origin, dot-paths, and `token` when given: the printed URL carries it), printing the URL; Ctrl-C or SIGTERM
    stops it cleanly at any moment (`life`: the command's own, installed when it started; else one from here on)."""
    import uvicorn

    from ..pipelines.guard import Guard

    app = Guard(app, host, token)

    life = life or Lifetime().install()
    _Server = _server_class()
    if not _loopback(host):
        print(
            f"warning: --host {host} makes {what} reachable from other machines, "
            + ("with only its token asking who they are" if token else "with nothing asking who they are"),
            file=sys.stderr,
            flush=True,
        )
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port_))
        sock.listen(128)  # listening before the URL is printed: a client that is quick queues, not refused
    except (OSError, OverflowError) as e:
        raise UsageError(
            f"cannot listen on {host}:{port_} ({getattr(e, 'strerror', None) or e}); pass another --port or --host"
        ) from None
    try:
        server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        query = f"?token={token}" if token else ""
        print(f"{what} at http://{shown}:{bound}/{query} (Ctrl-C stops)", flush=True)
        life.serve(server, [sock])
    finally:
        sock.close()
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve_args(p) -> None:
    p.add_argument("folder", help="an atlas or report folder (zfnet atlas --out, zfnet report --out)")
    p.add_argument("--port", type=port, default=8000, help="0: a free port")
    p.add_argument("--host", default="127.0.0.1", help="another address than loopback exposes the folder (warned)")


@command(
    "serve",
    "serve an atlas or report folder over HTTP (optional: index.html also opens from the file system)",
    "zfnet serve atlas-fm --port 8000",
    arguments=_serve_args,
)
def _serve_run(args) -> int:
    life = Lifetime().install()
    try:
        return _serve(args, life)
    except Stopped:
        return 0


def _serve(args, life: Lifetime) -> int:
    if not os.path.isfile(os.path.join(args.folder, "index.html")):
        raise UsageError(
            f"{args.folder!r} holds no page (index.html); run `zfnet report --out {args.folder}` (or zfnet atlas) first"
        )
    try:
        from ..pipelines.explore import folder_app
    except ImportError:
        raise UsageError(f"zfnet serve: {NEEDS_SERVER}") from None
    try:
        app = folder_app(os.path.realpath(args.folder))
    except ImportError:
        raise UsageError(f"zfnet serve: {NEEDS_SERVER}") from None
    return run_server(app, args.host, args.port, f"serving {args.folder}", life)
