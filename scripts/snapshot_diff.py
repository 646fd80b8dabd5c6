"""Fig. 4's claim as numbers (issue 39): the embedded model's training snapshots indexed over the 2,000 bundled
Fashion-MNIST test images (each snapshot's conv layers and stored mean in the embedded model), each diffed against
the next and against the final model (`zfnet.pipelines.diff.run_diff`): per layer the median correlation of the
matched pairs and how many units match above 0.9 - lower layers should settle first. Writes
docs/diff/snapshots.json, prints the tables, and screenshots the page of the first snapshot against the final
model (headless Chromium) as docs/diff/diff.png.

    python scripts/snapshot_diff.py            # about 2 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from zfnet import data as zdata
from zfnet.checkpoints import load_snapshot
from zfnet.pipelines.diff import run_diff
from zfnet.pipelines.index import IndexSettings, build_index
from zfnet.pretrained import open_embedded
from zfnet.pretrained import snapshots as embedded_snapshots
from zfnet.settings import Run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "docs", "diff")


def summary(d: dict) -> dict:
    out = {}
    for name, e in d["layers"].items():
        r = sorted(p["r"] for p in e["pairs"])
        out[name] = {"units": min(e["widths"]), "matched_05": e["matched"], "matched_09": sum(x >= 0.9 for x in r),
                     "median_r": r[len(r) // 2] if r else None}  # fmt: skip
    return out


def screenshot(page: str, path: str) -> None:
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(a)
    b = webdriver.Chrome(options=opts)
    try:
        b.set_window_size(1200, 900)
        b.get("file://" + page)
        b.save_screenshot(path)
    finally:
        b.quit()


def main() -> int:
    chain = embedded_snapshots()  # the last one is the model itself
    rows = {"next": [], "final": []}
    with tempfile.TemporaryDirectory() as tmp:
        idx = {}
        for epoch, path in chain:
            opened = open_embedded()
            stored = load_snapshot(opened.model, path).preprocess(opened.model)
            if stored is not None and stored.mean_image is not None:
                opened.preprocess = opened.preprocess.with_mean(stored.mean_image)
            ds = zdata.open_dataset("fashion-mnist-mini", "test", opened.preprocess)
            idx[epoch] = os.path.join(tmp, f"idx-{epoch}")
            build_index(opened, ds, idx[epoch], IndexSettings(dtype="float32"), Run(batch_size=256))
        epochs, last = [e for e, _ in chain], chain[-1][0]
        for kind, pairs in (("next", list(zip(epochs, epochs[1:]))), ("final", [(e, last) for e in epochs[:-1]])):
            for a, b in pairs:
                shown = kind == "final" and a == epochs[0]
                out = os.path.join(tmp, f"diff-{a}-{b}")
                d = run_diff(idx[a], idx[b], out, names=(f"epoch {a}", f"epoch {b}"), pictures=shown)
                rows[kind].append({"from": a, "to": b, "layers": summary(d)})
                if shown:
                    screenshot(os.path.join(out, "index.html"), os.path.join(OUT, "diff.png"))
    with open(os.path.join(OUT, "snapshots.json"), "w") as f:
        json.dump({"images": 2000, "threshold": 0.5, **rows}, f, indent=1)
    for kind, title in (("next", "each snapshot against the next"), ("final", "each snapshot against the final model")):
        layers = list(rows[kind][0]["layers"])
        print(f"\n{title}: median r of the matched pairs (units above 0.9 of all)\n")
        print("| epochs | " + " | ".join(layers) + " |")
        print("|---|" + "---|" * len(layers))
        for r in rows[kind]:
            cells = [f"{r['layers'][n]['median_r']:.3f} ({r['layers'][n]['matched_09']}/{r['layers'][n]['units']})"
                     for n in layers]  # fmt: skip
            print(f"| {r['from']} -> {r['to']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
