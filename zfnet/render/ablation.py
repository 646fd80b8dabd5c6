"""Table 2 laid out as the paper's, ours beside the paper's numbers, and a plot of the errors per row - from the
rows an ablation collected (never a model)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..io import atomic_save_figure

ROW_NAMES = {
    "base": "{base} (as built)",
    "rm34": "Removed layers 3,4",
    "rm7": "Removed layer 7",
    "rm67": "Removed layers 6,7",
    "rm3467": "Removed layers 3,4,6,7",
    "fc2048": "Adjust layers 6,7: 2048 units (x1/2)",
    "fc8192": "Adjust layers 6,7: 8192 units (x2)",
    "wide345": "Adjust layers 3,4,5: 512,1024,512 maps (x4/3, x8/3, x2)",
    "fc8192-wide345": "Layers 6,7 x2 and layers 3,4,5 x4/3, x8/3, x2",
}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def ablation_markdown(base: str, rows: list[dict], paper: dict[str, tuple], recipe_note: str) -> str:
    lines = [
        f"### Table 2 on {base}: error %",
        "",
        recipe_note,
        "",
        "Val: the validation set's centre crop, and Sec. 3's 10 crops (4 corners + centre, with flips; the "
        "softmax averaged) - the paper's Table 2 does not say which it used.",
        "",
        "| Error % | Train top-1 | Val top-1 centre | Val top-1 10 crops | Val top-5 centre | Val top-5 10 crops | "
        "paper: Train top-1 | Val top-1 | Val top-5 | parameters | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, half = paper.get(r["variant"], (None, ""))
        paper_cells = " | ".join(f"{v:.1f}" for v in p) if p else "- | - | -"
        name = ROW_NAMES.get(r["variant"], r["variant"]).format(base=base)
        if p and half:
            name += f" <sub>(paper: {'Krizhevsky' if half == 'alexnet' else 'ZFNet'} half)</sub>"
        status = r["status"] if r["status"] != "partial" else f"partial ({r['epochs_done']} epochs)"
        lines.append(
            f"| {name} | {_pct(r['train_top1_err'])} | {_pct(r['val_top1_err'])} | "
            f"{_pct(r.get('val_top1_err_10crop'))} | {_pct(r['val_top5_err'])} | "
            f"{_pct(r.get('val_top5_err_10crop'))} | "
            f"{paper_cells} | {r['parameters']:,} | {status} |"
        )
    return "\n".join(lines) + "\n"


def ablation_plot(base: str, rows: list[dict], path: str) -> None:
    done = [r for r in rows if r["status"] == "done"]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(done) + 2), 4))
    xs = range(len(done))
    w = 0.38
    ax.bar([x - w / 2 for x in xs], [100 * r["train_top1_err"] for r in done], w, label="train top-1")
    ax.bar([x + w / 2 for x in xs], [100 * r["val_top1_err"] for r in done], w, label="val top-1 (centre crop)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["variant"] for r in done], rotation=30, ha="right")
    ax.set_ylabel("error (%)")
    ax.set_title(f"Table 2 on {base}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)
