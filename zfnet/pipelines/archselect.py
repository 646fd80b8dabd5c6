"""`zfnet archselect` as a library call: train the four Sec. 4.1 runs (zfnet.experiments.archselect), then write
OUT/results.json, OUT/table.md and OUT/fig5.png (layer-1 filters beside layer-2 projections per run)."""

from __future__ import annotations

import os
import time

from ..experiments import archselect
from ..io import atomic_write_json, atomic_write_text
from ..provenance import environment
from ..recipe import Recipe, RunOptions
from ..render.archselect import archselect_figure, archselect_markdown
from .ablation import _claim
from .train import draw_curves


def run_archselect(
    out: str, recipe: Recipe, *, options: RunOptions, progress: bool = True, table_only: bool = False
) -> dict:
    started = time.perf_counter()
    _claim(out, recipe)

    def announce(name: str, resume: bool) -> None:
        print(f"archselect: {'resuming' if resume else 'training'} {name} -> {os.path.join(out, name)}", flush=True)

    analyses = archselect.run(
        out, recipe, options=options, progress=progress, on_logs=draw_curves, on_run=announce, train=not table_only
    )
    rows = [a.to_json() for a in analyses]
    note = (
        f"{recipe.model} on {recipe.data}, {recipe.epochs} epochs"
        + (f", first {recipe.limit_train} training images" if recipe.limit_train else "")
        + "; layer-1 diagnostics over 2,000 validation images; everything else Sec. 3 (OUT/recipe.json)."
    )
    atomic_write_text(os.path.join(out, "table.md"), archselect_markdown(rows, note))
    if analyses:
        archselect_figure(analyses, os.path.join(out, "fig5.png"))
    by = {r["name"]: r for r in rows}
    diff = None
    if "krizhevsky-like" in by and "zfnet-like" in by:
        diff = by["krizhevsky-like"]["val_top1_err"] - by["zfnet-like"]["val_top1_err"]
    result = {
        "experiment": "architecture selection (Sec. 4.1, Fig. 5)",
        "runs": rows,
        "configs": {
            n: {"first_layer": list(f), "second_stride": s2, "clipping": c}
            for n, (f, s2, c) in archselect.configs(recipe.model).items()
        },
        "val_top1_err_krizhevsky_minus_zfnet": diff,
        "aliasing_cutoff_cycles_per_px": archselect.cutoff(recipe.model),
        "recipe": recipe.to_dict(),
        "table": "table.md",
        "figure": "fig5.png",
        "complete": len(rows) == 4,
        "wall_seconds_this_call": time.perf_counter() - started,
        "environment": environment(),
    }
    atomic_write_json(os.path.join(out, "results.json"), result)
    return result
