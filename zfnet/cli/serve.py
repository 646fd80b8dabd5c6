"""`zfnet serve`: an atlas or report folder over HTTP (optional: the pages also open from the file system)."""

from __future__ import annotations

import os

from ..errors import UsageError
from .args import port
from .registry import command


def _serve_args(p) -> None:
    p.add_argument("folder", help="an atlas or report folder (zfnet atlas --out, zfnet report --out)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--host", default="127.0.0.1")


@command(
    "serve",
    "serve an atlas or report folder over HTTP (optional: index.html also opens from the file system)",
    "zfnet serve atlas-fm --port 8000",
    arguments=_serve_args,
)
def _serve_run(args) -> int:
    import functools
    import http.server

    if not os.path.isfile(os.path.join(args.folder, "index.html")):
        raise UsageError(
            f"{args.folder!r} holds no page (index.html); run `zfnet report --out {args.folder}` (or zfnet atlas) first"
        )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args.folder)
    try:
        server = http.server.ThreadingHTTPServer((args.host, args.port), handler)
    except (OSError, OverflowError) as e:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port} ({getattr(e, 'strerror', None) or e}); "
            "pass another --port or --host"
        ) from None
    print(f"serving {args.folder} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
