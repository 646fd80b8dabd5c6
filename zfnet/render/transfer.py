"""Tables 3, 4 and 6 laid out as the paper's with its numbers beside ours, and Fig. 7 (accuracy against training
images per class) - from the experiments' summaries (never a model)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import textwrap

import matplotlib.pyplot as plt

from ..experiments.transfer import layer_depth
from ..io import atomic_save_figure

PAPER_TABLE3 = {
    "Bo et al. [3]": (None, (81.4, 0.33)),
    "Yang et al. [37]": ((73.2, None), (84.3, None)),
    "Non-pretrained convnet": ((22.8, 1.5), (46.5, 1.7)),
    "ImageNet-pretrained convnet": ((83.8, 0.5), (86.5, 0.5)),
}
PAPER_TABLE4_PER_CLASS = (15, 30, 45, 60)
PAPER_TABLE4 = {
    "Sohn et al. [31]": ((35.1, None), (42.1, None), (45.7, None), (47.9, None)),
    "Bo et al. [3]": ((40.5, 0.4), (48.0, 0.2), (51.9, 0.2), (55.2, 0.3)),
    "Non-pretr.": ((9.0, 1.4), (22.5, 0.7), (31.2, 0.5), (38.8, 1.4)),
    "ImageNet-pretr.": ((65.7, 0.2), (70.6, 0.2), (72.7, 0.4), (74.2, 0.3)),
}
PAPER_TABLE6 = {
    "SVM (1)": ((44.8, 0.7), (24.6, 0.4)),
    "SVM (2)": ((66.2, 0.5), (39.6, 0.3)),
    "SVM (3)": ((72.3, 0.4), (46.0, 0.3)),
    "SVM (4)": ((76.6, 0.4), (51.3, 0.1)),
    "SVM (5)": ((86.2, 0.8), (65.6, 0.3)),
    "SVM (7)": ((85.5, 0.4), (71.7, 0.2)),
    "Softmax (5)": ((82.9, 0.4), (65.7, 0.5)),
    "Softmax (7)": ((85.4, 0.4), (72.6, 0.1)),
}


def _finish(fig, ax, title: str, path: str) -> None:
    ax.set_ylabel("mean per-class accuracy (%)")
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)


def _cell(s: dict | None) -> str:
    return "-" if s is None else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def _paper(v) -> str:
    if v is None:
        return "-"
    m, sd = v
    return f"{m:.1f}" if sd is None else f"{m:.1f} ± {sd:g}"


def transfer_markdown(summary: dict, per_class: list[int], layer: str, title: str, protocol: str) -> str:
    head = " | ".join(f"Acc % {n}/class" for n in per_class)
    lines = [
        f"### {title}",
        "",
        f"| # Train | {head} |",
        "|---|" + "---|" * len(per_class),
        "| Non-pretrained convnet (trained from scratch) | "
        + " | ".join(_cell(summary.get(f"scratch/{n}")) for n in per_class)
        + " |",
        f"| Pretrained convnet, softmax on {layer} | "
        + " | ".join(_cell(summary.get(f"softmax/{layer}/{n}")) for n in per_class)
        + " |",
        "",
    ]
    if protocol == "caltech256":
        lines += [
            "The paper's Table 4 (Caltech-256, ImageNet ZFNet):",
            "",
            "| # Train | " + " | ".join(f"{n}/class" for n in PAPER_TABLE4_PER_CLASS) + " |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {k} | " + " | ".join(_paper(v) for v in vals) + " |" for k, vals in PAPER_TABLE4.items()]
    else:
        lines += [
            "The paper's Table 3 (Caltech-101, ImageNet ZFNet, 5 folds):",
            "",
            "| # Train | Acc % 15/class | Acc % 30/class |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {_paper(a)} | {_paper(b)} |" for k, (a, b) in PAPER_TABLE3.items()]
    return "\n".join(lines) + "\n"


def fig7(summary: dict, per_class: list[int], layer: str, path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        (f"softmax/{layer}/{{n}}", "pretrained (fixed layers 1-7 + softmax)"),
        ("scratch/{n}", "from scratch (all layers trained)"),
    ):
        ns = [n for n in per_class if key.format(n=n) in summary]
        if ns:
            m = [100 * summary[key.format(n=n)]["mean"] for n in ns]
            s = [100 * summary[key.format(n=n)]["std"] for n in ns]
            ax.errorbar(ns, m, yerr=s, marker="o", capsize=3, label=label)
    ax.set_xlabel("training images per class")
    _finish(fig, ax, title, path)


def probe_markdown(summary: dict, layers: list[str], per_class: int, title: str) -> str:
    lines = [
        f"### {title}",
        "",
        f"| classifier (layer) | Acc % {per_class}/class | paper: Cal-101 (30/class) | paper: Cal-256 (60/class) |",
        "|---|---|---|---|",
    ]
    for name, label in (("svm", "SVM"), ("softmax", "Softmax")):
        for layer in layers:
            depth = layer_depth(layer)  # rows by the paper's layer number, not by list position
            p = PAPER_TABLE6.get(f"{label} ({depth})", (None, None))
            lines.append(
                f"| {label} ({depth if depth is not None else '-'}: {layer}) | "
                f"{_cell(summary.get(f'{name}/{layer}/{per_class}'))} | {_paper(p[0])} | {_paper(p[1])} |"
            )
    return "\n".join(lines) + "\n"


def probe_plot(summary: dict, layers: list[str], per_class: int, path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    depths = [layer_depth(l) for l in layers]
    xs = [d for d in depths if d is not None]
    if len(xs) != len(layers):  # not all paper-named: by position
        xs = list(range(1, len(layers) + 1))
    for name, label in (("svm", "linear SVM"), ("softmax", "softmax")):
        m = [100 * summary[f"{name}/{l}/{per_class}"]["mean"] for l in layers]
        s = [100 * summary[f"{name}/{l}/{per_class}"]["std"] for l in layers]
        ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{i}\n{l}" for i, l in zip(xs, layers)])
    ax.set_xlabel("layer whose features are classified")
    _finish(fig, ax, title, path)
