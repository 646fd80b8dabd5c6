"""`zfnet dedupe` as a library call: match set B against set A (zfnet.experiments.dedupe) and write
OUT/dedupe.json (pairs with ids and scores, settings, timings), OUT/pairs.csv, OUT/exclude.txt (the A ids to
leave out: `--exclude OUT/exclude.txt` on any command that takes --data), OUT/pairs.png and OUT/scores.png."""

from __future__ import annotations

import csv
import io
import os
import time
from typing import Any

from .. import data as zdata
from ..errors import UsageError
from ..experiments.dedupe import dedupe
from ..io import atomic_write_json, atomic_write_text
from ..provenance import environment
from ..render.dedupe import pairs_sheet, score_histogram
from ..runtime import resolve_device

MAX_SIZE = 64  # descriptor side: 4,096 numbers per image
MAX_BLOCK = 65536  # images of B compared at once


def run_dedupe(
    set_a: str,
    set_b: str,
    *,
    out: str,
    split_a: str | None = None,
    split_b: str | None = None,
    threshold: float = 0.9,
    size: int = 16,
    k: int = 5,
    block: int = 4096,
    workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    sheet: int = 60,
) -> dict:
    if not -1 <= threshold <= 1:  # NaN fails this too
        raise UsageError(f"--threshold {threshold} must be a correlation in [-1, 1]")
    if not 2 <= size <= MAX_SIZE:
        raise UsageError(
            f"--size {size} must be 2..{MAX_SIZE}: each image becomes a size x size descriptor, and {MAX_SIZE} px "
            "already tells near-duplicates apart (the default is 16)"
        )
    if k < 1 or block < 1 or block > MAX_BLOCK:
        raise UsageError(f"--k must be >= 1 and --block 1..{MAX_BLOCK}")
    dev = resolve_device(device)
    pp = zdata.Preprocess(2 * size, 2 * size, 3, "resize", 255.0)  # aspect and size out of the way; grey later
    a = zdata.open_dataset(set_a, split_a, pp)
    b = zdata.open_dataset(set_b, split_b, pp)
    started = time.perf_counter()
    m = dedupe(a, b, size, k, block, workers, dev, progress)
    wall = time.perf_counter() - started
    for ds in (a, b):
        ds.check_readable()
    pairs: list[dict[str, Any]] = [
        {"a": ia, "a_id": a.image_id(ia), "b": ib, "b_id": b.image_id(ib), "score": s}
        for ia, ib, s in m.pairs(threshold)
    ]
    os.makedirs(out, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["score", "b_id", "a_id", "b", "a"], lineterminator="\n")
    w.writeheader()
    w.writerows({k_: (f"{p[k_]:.6f}" if k_ == "score" else p[k_]) for k_ in w.fieldnames} for p in pairs)
    atomic_write_text(os.path.join(out, "pairs.csv"), buf.getvalue())
    excluded = sorted({p["a_id"] for p in pairs})
    atomic_write_text(
        os.path.join(out, "exclude.txt"),
        f"# images of {set_a} ({a.split}) that also occur in {set_b} ({b.split}): normalized "
        f"correlation >= {threshold}\n" + "".join(f"{i}\n" for i in excluded),
    )
    shown = pairs[:sheet]
    pairs_sheet(shown, [b.base(p["b"]) for p in shown], [a.base(p["a"]) for p in shown], os.path.join(out, "pairs.png"))
    best = m.scores[0]
    score_histogram(
        best, threshold, os.path.join(out, "scores.png"), f"{set_b} ({b.split}) against {set_a} ({a.split})"
    )
    result = {
        "method": "overlap removal by normalized correlation of downsampled copies (Sec. 5.2 footnote)",
        "a": {"spec": set_a, "split": a.split, "images": len(a), "skipped": a.skipped_report()},
        "b": {"spec": set_b, "split": b.split, "images": len(b), "skipped": b.skipped_report()},
        "settings": {"threshold": threshold, "size": size, "k": k, "block": block},
        "pairs": pairs,
        "b_images_with_a_match": len({p["b"] for p in pairs}),
        "excluded_a_images": len(excluded),
        "best_score_quantiles": {q: float(best.quantile(q)) for q in (0.5, 0.9, 0.99, 0.999)},
        "comparisons": m.comparisons,
        "compare_seconds": m.compare_seconds,
        "comparisons_per_second": m.comparisons / max(m.compare_seconds, 1e-9),
        "wall_seconds": wall,
        "environment": environment(dev),
        "files": {"exclude": "exclude.txt", "pairs": "pairs.csv", "sheet": "pairs.png", "histogram": "scores.png"},
    }
    atomic_write_json(os.path.join(out, "dedupe.json"), result)
    return result
