"""`zfnet ablate` as a library call: train the Table 2 rows (zfnet.experiments.ablation), then write
OUT/results.json, OUT/table.md (laid out as the paper's, its numbers beside ours), OUT/errors.png and
OUT/recipe.json (the one recipe every row shares)."""

from __future__ import annotations

import os
import time

from ..errors import UsageError
from ..experiments.ablation import collect, paper_row, train_variants, variant_names
from ..io import atomic_write_json, atomic_write_text
from ..provenance import environment
from ..readback import read_json
from ..recipe import Recipe, RunOptions
from ..render.ablation import ablation_markdown, ablation_plot
from .train import draw_curves


def _claim(out: str, recipe: Recipe) -> None:
    """OUT/recipe.json: the shared recipe (without the model); another recipe into the same OUT is refused."""
    shared = {k: v for k, v in recipe.to_dict().items() if k != "model"}
    path = os.path.join(out, "recipe.json")
    if os.path.isfile(path):
        old = read_json(path, dict, fix=f"restore it, or pass a new --out (the runs in {out} stay as they are)")
        changed = sorted(k for k in set(old) | set(shared) if old.get(k) != shared.get(k))
        if changed:
            raise UsageError(
                f"{out!r} holds an ablation trained with another recipe ({', '.join(changed)}); pass the "
                "same recipe to continue it, or a new --out"
            )
        return
    os.makedirs(out, exist_ok=True)
    atomic_write_json(path, shared)


def write_table(out: str, base: str, variants: list[str], recipe: Recipe, started: float | None = None) -> dict:
    rows = [r.to_json() for r in collect(out, base, variants)]
    paper = {r["variant"]: paper_row(base, r["variant"]) for r in rows}
    note = (
        f"Recipe: {recipe.data}, {recipe.epochs} epochs, batch {recipe.batch_size}, lr {recipe.lr}"
        + (f", first {recipe.limit_train} training images" if recipe.limit_train else "")
        + (f", {recipe.limit_val} validation images" if recipe.limit_val else "")
        + (f", annealed after epochs {list(recipe.anneal_at)}" if recipe.anneal_at else "")
        + "; everything else Sec. 3 (OUT/recipe.json). The paper's numbers: ImageNet, 70 epochs."
    )
    atomic_write_text(os.path.join(out, "table.md"), ablation_markdown(base, rows, paper, note))
    if any(r["status"] == "done" for r in rows):
        ablation_plot(base, rows, os.path.join(out, "errors.png"))
    result = {
        "experiment": "Table 2 (architecture ablations)",
        "base": base,
        "rows": rows,
        "paper": {k: {"numbers": v[0], "half": v[1]} for k, v in paper.items()},
        "recipe": recipe.to_dict(),
        "table": "table.md",
        "plot": "errors.png",
        "complete": all(r["status"] == "done" for r in rows),
        "environment": environment(),
    }
    if started is not None:
        result["wall_seconds_this_call"] = time.perf_counter() - started
    atomic_write_json(os.path.join(out, "results.json"), result)
    return result


def run_ablation(
    out: str,
    base: str,
    *,
    variants: str | None,
    recipe: Recipe,
    options: RunOptions,
    progress: bool = True,
    table_only: bool = False,
) -> dict:
    names = variant_names(variants)
    started = time.perf_counter()
    _claim(out, recipe)
    if not table_only:

        def announce(v: str, resume: bool) -> None:
            print(f"ablation: {'resuming' if resume else 'training'} {v} -> {os.path.join(out, v)}", flush=True)

        train_variants(
            out,
            base,
            variants=names,
            recipe=recipe,
            options=options,
            progress=progress,
            on_logs=draw_curves,
            on_run=announce,
        )
    return write_table(out, base, names, recipe, started)
