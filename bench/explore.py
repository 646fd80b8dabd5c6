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

    python bench/explore.py --json bench/results/explore.json      # about 3 minutes
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
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line} {proc.stderr.read()[-2000:]}")
    return proc, found.group(0)


def fetch(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as r:
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
        info = json.loads(urllib.request.urlopen(base + "api/info").read())
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
            meta = json.loads(urllib.request.urlopen(base + f"api/layer/{keys[0]}/{layer}").read())
            channels[layer] = meta["channels"]
        for _ in range(n):
            k, layer = rng.choice(keys), rng.choice(layers)
            grid_reqs.append([f"api/layer/{k}/{layer}.png"])
            proj_reqs.append([f"api/project/{k}/{layer}/{rng.randrange(channels[layer])}?rule={rng.choice(modes)}"])
        res["layer_grid"] = measure(base, "layer_grid", grid_reqs)
        res["projection"] = measure(base, "projection", proj_reqs)
        return res
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


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
