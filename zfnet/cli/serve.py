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


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped by Ctrl-C (or SIGTERM) as a normal end: it shuts down the same graceful way,
        without raising the signal again afterwards (uvicorn does, and the process would report an interrupt)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

        def _stop(self, sig, frame) -> None:
            self.force_exit = self.should_exit  # a second Ctrl-C: stop without waiting
            self.should_exit = True

    return Server


def run_server(app, host: str, port_: int, what: str) -> int:
    """Serve `app` (ASGI) with uvicorn on host:port (0: a free port), printing the URL; Ctrl-C stops it cleanly."""
    import uvicorn

    _Server = _server_class()
    if not _loopback(host):
        print(
            f"warning: --host {host} makes {what} reachable from other machines, with nothing asking who they are",
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
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"{what} at http://{shown}:{bound}/ (Ctrl-C stops)", flush=True)
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
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
    return run_server(app, args.host, args.port, f"serving {args.folder}")
