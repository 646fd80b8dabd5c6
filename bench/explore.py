"""`zfnet explore` request latencies: the server started as a user starts it (`python -m zfnet explore --port 0`),
4 client threads at once, each request timed from its send to the last byte of its answer, p50 and p95 over 240
requests of each kind:

  image       GET /api/predict/<image> of an image not seen before (a forward and every layer's maps), then the
              image itself (/api/image/<image>.png): what showing a new image costs
  layer_grid  GET /api/layer/<image>/<layer>.png: every feature map of a layer as one picture
  projection  GET /api/project/<image>/<layer>/<map>?mode=...: a map's deconvnet projection from its strongest
              unit, with the receptive-field patch (one round trip)

Images, layers, maps and modes are drawn at random (seed 0) from distinct images, so that the server's caches
do not hide the work. Two models: the embedded one on its bundled images, and ZFNet (Fig. 3, 224 px,
the architecture's own initialisation, seed 0) on 96 smooth-noise 224 px images written to a temporary folder.

Issue 38 adds, on each model: a new image's prediction idle and with 20 occlusion jobs queued by one client (the
9th and later refused with 429; interactive requests go first, jobs a chunk at a time), and paint-to-occlude
strokes, incremental against whole forwards.

    python bench/explore.py --json bench/results/explore.json      # about 4 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _common import finish
from occlusion import smooth_images
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "zfnet", "explore", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, ZFNET_PROGRESS="0", PYTHONUNBUFFERED="1"),
    )
    line = proc.stdout.readline()
    found = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\w+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line} {proc.stderr.read()[-2000:]}")
    TOKEN["X-Zfnet-Token"] = found.group(2)  # every request carries it, as the page's cookie does
    return proc, found.group(1)


TOKEN: dict[str, str] = {}


def call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=TOKEN)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def fetch(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=TOKEN), timeout=300) as r:
        r.read()
        if r.status != 200:
            raise SystemExit(f"{url}: {r.status}")
    return time.perf_counter() - t0


def measure(base: str, kind: str, requests: list[list[str]], clients: int = 4) -> dict:
    """Each request is a list of URLs fetched one after the other (one user action); 4 clients at once."""

    def one(urls: list[str]) -> float:
        return sum(fetch(base + u) for u in urls)

    with ThreadPoolExecutor(clients) as pool:
        times = sorted(pool.map(one, requests))
    ms = [1000 * t for t in times]
    out = {
        "requests": len(ms),
        "clients": clients,
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[int(0.95 * (len(ms) - 1))],
        "max_ms": ms[-1],
    }
    print(f"  {kind}: p50 {out['p50_ms']:.1f} ms, p95 {out['p95_ms']:.1f} ms ({len(ms)} requests, {clients} clients)")
    return out


def bench(name: str, args: list[str], images: int, n: int, seed: int = 0) -> dict:
    proc, base = start(args)
    try:
        info = json.loads(call(base + "api/info")[1])
        layers, modes = info["layers"], info["rules"]
        rng = random.Random(seed)
        keys = [f"d{i}" for i in rng.sample(range(images), min(images, n))]
        if len(keys) < n:  # fewer images than requests: the rest repeat (the image view's cost is a first visit)
            keys += [rng.choice(keys) for _ in range(n - len(keys))]
        fetch(base + f"api/predict/{keys[0]}")  # one request first: the server's first call sets up its kernels
        res = {"image": measure(base, "image", [[f"api/predict/{k}", f"api/image/{k}.png"] for k in keys])}
        # every image shown once now (as a user would have): grids and projections, at random
        grid_reqs, proj_reqs = [], []
        channels = {}
        for layer in layers:
            meta = json.loads(call(base + f"api/layer/{keys[0]}/{layer}")[1])
            channels[layer] = meta["channels"]
        for _ in range(n):
            k, layer = rng.choice(keys), rng.choice(layers)
            grid_reqs.append([f"api/layer/{k}/{layer}.png"])
            proj_reqs.append([f"api/project/{k}/{layer}/{rng.randrange(channels[layer])}?rule={rng.choice(modes)}"])
        res["layer_grid"] = measure(base, "layer_grid", grid_reqs)
        res["projection"] = measure(base, "projection", proj_reqs)
        res["under_load"] = under_load(base, images, info["input"][-1], seed)
        res["paint"] = {s: paint_strokes(base, info["input"][-1], s) for s in ("incremental", "whole")}
        return res
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def under_load(base: str, images: int, size: int, seed: int, queued: int = 20, n: int = 24) -> dict:
    """Issue 38: a new image's prediction (GET /api/predict of an image not seen before, one client) idle, then
    with `queued` occlusion jobs sent by one client at once (a window of 1/14 of the input, the smallest stride
    that keeps under the explorer's 4,096 positions: 729 positions at 28 px, 2,809 at 224): how many were refused
    (429), and the prediction's latency while the admitted ones run."""
    rng = random.Random(seed + 1)
    keys = [f"d{i}" for i in rng.sample(range(images), 2 * n + 1)]
    idle = sorted(1000 * fetch(base + f"api/predict/{k}") for k in keys[:n])
    window, stride = max(2, size // 14), max(1, -(-size // 60))
    job = f"api/occlusion/{keys[-1]}?window={window}&stride={stride}"
    answers = [call(base + job, "POST") for _ in range(queued)]
    jobs = [json.loads(b)["job"] for status, b in answers if status == 200]
    refused = sum(status == 429 for status, _ in answers)
    loaded = sorted(1000 * fetch(base + f"api/predict/{k}") for k in keys[n : 2 * n])
    polls = [json.loads(call(base + f"api/job/{j}")[1]) for j in jobs]
    running = sum(p.get("result") is None and p.get("error") is None for p in polls)
    for j in jobs:
        call(base + f"api/job/{j}", "DELETE")
    out = {
        "job": job, "queued": queued, "admitted": len(jobs), "refused_429": refused, "still_running_after": running,
        "idle_p50_ms": statistics.median(idle), "loaded_p50_ms": statistics.median(loaded),
        "idle_max_ms": idle[-1], "loaded_max_ms": loaded[-1],
    }  # fmt: skip
    out["ratio_p50"] = out["loaded_p50_ms"] / out["idle_p50_ms"]
    print(f"  under load: {len(jobs)} jobs admitted, {refused} refused (429); a new prediction p50 "
          f"{out['idle_p50_ms']:.1f} ms idle, {out['loaded_p50_ms']:.1f} ms with the jobs running "
          f"({out['ratio_p50']:.2f}x; max {out['loaded_max_ms']:.1f} ms); {running} jobs running then")  # fmt: skip
    return out


def paint_strokes(base: str, size: int, strategy: str, strokes: int = 16) -> dict:
    """Issue 38: a brush of size/8 px painted across the image in `strokes` strokes (each a disc further along
    a diagonal), POST /api/paint after each; the server's own seconds per stroke (p50) and the round trip."""
    import io

    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    server, trip = [], []
    r = max(2, size // 16)
    for k in range(strokes):
        c = int(size * (0.2 + 0.6 * k / max(1, strokes - 1)))
        mask[(yy - c) ** 2 + (xx - c) ** 2 <= r * r] = 255
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        t0 = time.perf_counter()
        status, body = call(base + f"api/paint/d0?strategy={strategy}", "POST", buf.getvalue())
        trip.append(1000 * (time.perf_counter() - t0))
        if status != 200:
            raise SystemExit(f"paint: {status} {body[:300]!r}")
        server.append(1000 * json.loads(body)["seconds"])
    out = {"strokes": strokes, "server_p50_ms": statistics.median(server), "round_trip_p50_ms": statistics.median(trip)}
    print(f"  paint ({strategy}): {out['server_p50_ms']:.1f} ms a stroke on the server, "
          f"{out['round_trip_p50_ms']:.1f} ms round trip (p50 of {strokes})")  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=240, help="requests of each kind (>= 200 for the p95)")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {}
    print("embedded (zfnet-small, 28 px):", flush=True)
    out["embedded"] = bench("embedded", [], 2000, args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        x = smooth_images(96, 224, 3, seed=1)
        for i, im in enumerate(x):
            pixels = (im.permute(1, 2, 0).numpy() + 128).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:03d}.png"))
        print("zfnet-224 (Fig. 3, 224 px):", flush=True)  # no --weights: the architecture's own initialisation
        out["zfnet-224"] = bench("zfnet-224", ["--model", "zfnet", "--data", folder], 96, args.requests)
    out["cpu"] = os.cpu_count()
    return finish(out, args.json)


if __name__ == "__main__":
    sys.exit(main())
