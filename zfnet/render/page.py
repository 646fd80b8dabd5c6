"""OUT/index.html of `zfnet report`: one static page (works from the file system, no network) with a table of
contents and one section per part of the paper, built only from the files the stages wrote (report.json,
model/model.json, atlas/manifest.json, ...).

The HTML is Jinja2 templates with autoescaping (`render/templates/report.html.j2`, one template per section under
`sections/`, the CSS in `report.css`); this module turns each result file into the plain values its template shows
(a "view"), and links only to files inside the report folder (result files are not trusted to say so). Tables come
from the JSON results; the Markdown tables other commands wrote (`--include`) are read with markdown-it-py, raw HTML
in them escaped."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..io import atomic_write_text
from .analyses import PAPER_CORRESPONDENCE

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")


@cache
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=True,
    )


def render(template: str, **values: Any) -> str:
    """A template of `render/templates` with `values`, every value escaped unless marked safe."""
    return _environment().get_template(template).render(**values)


def _read(out: str, rel: str | None) -> dict | None:
    if not rel:
        return None
    from ..readback import read_json_or_none

    return read_json_or_none(os.path.join(out, rel), dict)


def _href(rel: str) -> str:
    """A relative link inside the report: each path part URL-quoted (names are not trusted)."""
    from urllib.parse import quote

    return "/".join(quote(p) for p in rel.replace(os.sep, "/").split("/"))


def _inside(out: str, rel: str) -> bool:
    """`rel` names a file inside the report folder (result files are not trusted to say so)."""
    root = os.path.realpath(out)
    return os.path.realpath(os.path.join(root, rel)).startswith(root + os.sep)


@dataclass(frozen=True)
class Figure:
    """A picture of the report: its link (None: the file is missing or outside the report), caption, alt text."""

    rel: str
    href: str | None
    caption: str = ""
    alt: str = ""


def _figure(out: str, rel: Any, caption: str = "", alt: str = "") -> Figure:
    ok = isinstance(rel, str) and _inside(out, rel) and os.path.isfile(os.path.join(out, rel))
    return Figure(str(rel), _href(rel) if ok else None, caption, alt or caption or str(rel))


def _exists(out: str, rel: str) -> bool:
    return _inside(out, rel) and os.path.isfile(os.path.join(out, rel))


def _pct(err) -> str:
    return "-" if err is None else f"{100 * (1 - float(err)):.2f}%"


def _x(v) -> str:
    return "x".join(map(str, v)) if v else ""


def markdown_table(text: str):
    """Markdown another command wrote (its tables) as HTML, raw HTML in it escaped (markdown-it-py)."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return Markup(md.render(text))  # markdown-it escaped the text (html off)


# --- one view per section: the values its template shows ---------------------------------------------------------


def _model_facts(m: dict) -> list[tuple[str, str]]:
    arch = m["architecture"]
    rows = [
        ("parameters", f"{arch['params']:,}"),
        ("input", _x(arch["input_shape"])),
        (
            "weights",
            f"{m.get('weights') or m.get('initialization') or 'a module handed in (no weights file)'}"
            + (f" (sha256 {m['weights_sha256'][:16]}...)" if m.get("weights_sha256") else ""),
        ),
        ("source", "the embedded model (zfnet.pretrained)" if m.get("embedded") else "user weights"),
    ]
    meas = m.get("measured")
    if meas:
        rows.append(
            (
                f"top-1 accuracy on {meas['data']} {meas['split']} ({meas['images']:,} images, centre crop)",
                f"{_pct(meas['top1_err'])} (top-5 {_pct(meas['top5_err'])})",
            )
        )
    if m.get("unmeasured"):
        rows.append(("accuracy on the report's data", f"not measured: {m['unmeasured']}"))
    rows += _stored_metrics(m.get("stored_metrics") or {})
    if m.get("recipe"):
        keep = ("model", "data", "epochs", "batch_size", "lr", "seed")
        rows.append(("recipe", ", ".join(f"{k} {v}" for k, v in m["recipe"].items() if k in keep)))
    classes = m.get("classes") or []
    if classes:
        rows.append(("classes", ", ".join(str(c) for c in classes[:20]) + (" ..." if len(classes) > 20 else "")))
    return rows


def _stored_metrics(st: dict) -> list[tuple[str, str]]:
    rows = []
    for crop, label in (("centre", "centre crop"), ("ten_crop", "10 crops, Sec. 3")):
        if st.get(crop):
            rows.append(
                (
                    f"top-1 accuracy measured after training ({st.get('images') or 0:,} "
                    f"{st.get('split', 'test')} images, {label})",
                    f"{_pct(st[crop].get('top1_err'))} (top-5 {_pct(st[crop].get('top5_err'))})",
                )
            )
    if st.get("epochs"):
        wall = st.get("train_wall_seconds")
        rows.append(("training", f"{st['epochs']} epochs" + (f", {wall / 60:.0f} min" if wall else "")))
    return rows


def _model(out: str, m: dict) -> dict:
    layers = [
        (
            l["name"],
            l["kind"] + (f" ({l['detail']})" if l.get("detail") else ""),
            l["out_shape"][0],
            _x(l.get("kernel")),
            _x(l.get("stride")),
            _x(l.get("padding")),
            _x(l["out_shape"]),
            f"{l['params']:,}",
            _x(l.get("receptive_field")),
        )
        for l in m["architecture"]["layers"]
    ]
    caption = "Fig. 3 layout of this model: each layer's maps, filter size, stride and output size, read from the model"
    curves = None
    if m.get("curves"):
        curves = _figure(
            out, "model/" + m["curves"], "errors, losses and learning rate per epoch of the training run", "curves"
        )
    return {
        "figure": _figure(out, "model/" + m["figure"], caption, "architecture"),
        "facts": _model_facts(m),
        "layers": layers,
        "curves": curves,
    }


def _filters(out: str, f: dict) -> dict:
    caption = (
        "Fig. 5: the filters (each contrast-stretched), RMS per filter with dominant ones in red and dead ones in "
        "grey, spatial frequency spread"
    )
    models = []
    for m in f["models"]:
        s, rules = m["summary"], m["summary"].get("thresholds", {})
        rows = [
            ("filters", f"{s['filters']} of {s['kernel'][0]}x{s['kernel'][1]} x {s['in_channels']}"),
            (f"dominant ({rules.get('dominant', 'RMS well above the median')}, Fig. 5 (c))",
             f"{s['dominant']} ({100 * s['dominant_share']:.0f}%)"),
            ("share of energy in the strongest filter", f"{100 * s['energy_share_of_strongest']:.1f}%"),
            ("mean spatial frequency (cycles/px)", f"{s['frequency_mean']:.3f}"),
        ]  # fmt: skip
        if "dead" in s:
            rows.append(
                (
                    f"dead ({rules.get('dead', 'never respond on the scanned images')}, Fig. 5 (a))",
                    f"{s['dead']} ({100 * s['dead_share']:.0f}%)",
                )
            )
        models.append(rows)
    return {"figure": _figure(out, "atlas/" + f["figure"], caption, "layer-1 filters"), "models": models}


def _atlas(out: str, m: dict) -> dict:
    ds, layers = m["dataset"], []
    for layer in m["layer_order"]:
        info = m["layers"].get(layer, {})
        rf = info.get("field")
        maps = ", ".join(str(c) for c in m.get("panel_maps", {}).get(layer, []))
        cap = (
            f"{layer}: {info.get('channels', '?')} maps, receptive field {rf[0]}x{rf[1]} px; maps {maps}"
            if rf
            else layer
        )
        if layer in m.get("figures", {}):
            layers.append((layer, _figure(out, "atlas/" + m["figures"][layer], cap, f"{layer} panel")))
    return {"images": ds["images"], "spec": ds["spec"], "split": ds["split"], "layers": layers}


def _evolution(out: str, e: dict) -> dict:
    ds = e["dataset"]
    layers = [
        (
            layer,
            _figure(
                out,
                "evolution/" + rel,
                f"{layer}: maps {', '.join(str(c) for c in e['channels'][layer])} (rows) by epoch (columns)",
                f"{layer} evolution",
            ),
        )
        for layer, rel in e["figures"].items()
    ]
    return {"epochs": e["epochs"], "images": ds["images"], "spec": ds["spec"], "split": ds["split"], "layers": layers}


def _fill_words(s: dict, first: dict) -> str:
    if first.get("fill") == "grey" and first.get("fill_pixels"):
        grey = "/".join(f"{v:g}" for v in first["fill_pixels"])
        return f"grey {grey} ({first.get('fill_source') or 'the training mean pixel'}), pasted in pixels"
    if first.get("fill") == "mean-image" or s.get("fill") in (0, 0.0):
        return "the mean image (0 in model-input units)"
    return "pixel values " + "/".join(f"{v:g}" for v in first.get("fill_pixels") or [])


def _occlusion(out: str, o: dict) -> dict:
    s, classes = o["settings"], o.get("classes") or []

    def name(c):
        return classes[c] if c is not None and 0 <= c < len(classes) else str(c)

    first = o["images"][0] if o["images"] else {}
    figures = []
    for r in o["images"]:
        if r.get("target_source") == "predicted":
            cap = f"{r['image']}: predicted {name(r['base_class'])} (p {r['base_prob']:.2f})"
        else:
            cap = (
                f"{r['image']}: true class {r.get('label_name') or name(r.get('label'))}, predicted "
                f"{name(r['base_class'])} (p(true) {r['base_prob']:.2f})"
            )
        cap += f"; strongest map {r['layer']}/{r['channel']}"
        figures.append(_figure(out, "occlusion/" + r["figure"], cap, f"occlusion of {r['image']}"))
        # Fig. 6 (c) also shows "visualizations of this map from other images": the atlas's top-9 of the map
        others = f"atlas/maps/{r['layer']}/{int(r['channel']):04d}.png"
        if _exists(out, others):
            cap = f"(c) continued: {r['layer']} map {r['channel']} on other images (the atlas's top 9)"
            figures.append(_figure(out, others, cap))
    return {
        "window": s["window"],
        "stride": s["stride"],
        "layer": s["layer"],
        "fill": _fill_words(s, first),
        "ran": sorted({r.get("computation") or f"{r.get('strategy')} computation" for r in o["images"]}),
        "notes": sorted(
            {n for r in o["images"] for n in (r.get("feature_maps_note"), r.get("projection_rule_note")) if n}
        ),
        "predicted": any(r.get("target_source") == "predicted" for r in o["images"]),
        "figures": figures,
    }


def _evidence(out: str, e: dict) -> dict:
    """Issue 36: per layer and rule the median scores with their baselines (the atlas's every map beside the
    evidence stage's drawn units), the reading, the figures, and the faithfulness areas."""
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    head = ["layer", "rule", "weight dependence (SSIM to randomized)", "SSIM to other units",
            "the same, randomized model", "SSIM to edge map", "causal agreement"]  # fmt: skip
    keys = ("weight_ssim", "other_ssim", "randomized_other_ssim", "edge_ssim", "agreement")
    rows = [[l, r, *(fmt(v.get(k)) for k in keys)] for l, per in e["summary"].items() for r, v in per.items()]
    atlas = _read(out, "atlas/manifest.json")
    every = (atlas or {}).get("evidence") if isinstance(atlas, dict) else None
    atlas_rows = []
    if isinstance(every, dict) and every.get("summary"):
        atlas_rows = [
            [l, r, *(fmt(v.get(k)) for k in keys)] for l, per in every["summary"].items() for r, v in per.items()
        ]
    faithful = e.get("faithfulness") or {}
    f_head = ["map", "deletion area", "random order", "insertion area", "random order"]
    f_rows = [
        [
            name,
            *(fmt(res["median_auc"].get(k)) for k in ("deletion", "random_deletion", "insertion", "random_insertion")),
        ]
        for name, res in faithful.items()
    ]
    figures = [_figure(out, "evidence/" + rel, f"{layer}: each unit's projections, randomized, and causal map")
               for layer, rel in e["figures"].items() if layer not in ("logit_cascade", "faithfulness")]  # fmt: skip
    extra = []
    if "logit_cascade" in e["figures"]:
        extra.append(_figure(out, "evidence/" + e["figures"]["logit_cascade"],
                             "The predicted class's map as each layer is re-initialized, from the logits down "
                             "(Adebayo et al. 2018, Fig. 2)"))  # fmt: skip
    if "faithfulness" in e["figures"]:
        extra.append(_figure(out, "evidence/" + e["figures"]["faithfulness"],
                             "Deletion and insertion curves (Petsiuk et al. 2018), random order dashed"))  # fmt: skip
    units = sum(len(v) for v in every.get("layers", {}).values()) if isinstance(every, dict) else 0
    return {
        "head": head,
        "rows": rows,
        "atlas_rows": atlas_rows,
        "atlas_units": units,
        "f_head": f_head,
        "f_rows": f_rows,
        "reading": e.get("reading") or [],
        "figures": figures,
        "extra": extra,
    }


def _correspondence(out: str, c: dict) -> dict:
    """The table as the paper lays it out (one row per occlusion location, mean sign change +- std per layer),
    from correspondence.json, with the paper's dog-face table beside it."""
    layers = c["layers"]
    parts = c["parts"] + (["random"] if "random" in c["delta"][layers[0]] else [])
    rows = [
        (p.capitalize() if p == "random" else p, *(f"{c['delta'][l][p]:.3f} ± {c['std'][l][p]:.3f}" for l in layers))
        for p in parts
    ]
    paper = [
        (p, f"{m5:.3f} ± {s5:.3f}", f"{m7:.3f} ± {s7:.3f}") for p, ((m5, s5), (m7, s7)) in PAPER_CORRESPONDENCE.items()
    ]
    return {
        "title": f"{len(c.get('images') or [])} images, {len(c['parts'])} parts",
        "head": ["Occlusion location", *(f"Mean feature sign change, {l}" for l in layers)],
        "rows": rows,
        "paper": paper,
        "figure": _figure(out, "correspondence/" + c["figure"], "the masked images as the model sees them", "masks"),
    }


def _invariance(out: str, v: dict) -> dict:
    classes = v.get("classes") or []
    predicted = v.get("predicted") or [False] * len(v["labels"])
    names = ", ".join(
        f"{i} ({'predicted ' if p else ''}{classes[l] if l is not None and l < len(classes) else l})"
        for i, l, p in zip(v["images"], v["labels"], predicted)
    )
    target = "p(predicted class)" if predicted and all(predicted) else "p(true class)"
    caption = (
        "rows: translation, scaling, rotation; columns: examples, "
        f"feature distance at {' and '.join(v['layers'])}, {target}"
    )
    return {
        "names": names,
        "layers": v["layers"],
        "interpolation": v["interpolation"],
        "figure": _figure(out, "invariance/" + v["figure"], caption, "invariance"),
    }


def _included(out: str, inc: dict) -> dict:
    results = []
    for r in inc["results"]:
        table = ""
        rel = os.path.join("included", r["table"]) if r.get("table") else ""
        if rel and _exists(out, rel):
            with open(os.path.join(out, rel), encoding="utf-8") as f:
                table = markdown_table(f.read())
        figures = [_figure(out, "included/" + fig, "", r["experiment"]) for fig in r.get("figures", [])]
        results.append(
            {
                "experiment": r["experiment"],
                "source": r["source"],
                "summary": r.get("summary"),
                "table": table,
                "figures": figures,
            }
        )
    return {"results": results}


@dataclass(frozen=True)
class Section:
    """One section of the page: the result file it shows (under the report folder), its view, and the paper it
    reproduces. The stage that writes the file holds the section (`Stage.sections`)."""

    id: str
    title: str
    file: str
    view: Callable[[str, dict], dict]
    sentence: str


# the page's sections; each report stage names those its result feeds (`zfnet.pipelines.report.STAGES`)
MODEL = Section(
    "model",
    "The model",
    "model/model.json",
    _model,
    "The architecture drawn as Fig. 3 draws ZFNet, read from the model itself, with its parameters, "
    "accuracy and training curves (Sec. 3).",
)
FILTERS = Section(
    "filters",
    "Layer-1 filters",
    "atlas/filters.json",
    _filters,
    "The first layer's filters and their diagnostics, as Fig. 5 uses them to choose the architecture "
    "(dominant filters, dead filters, frequency coverage; Sec. 4.1).",
)
ATLAS = Section(
    "atlas",
    "Top-9 atlas",
    "atlas/manifest.json",
    _atlas,
    "Fig. 2: for each feature map its 9 strongest activations over the images, projected to pixels by the "
    "deconvnet (Sec. 2.1), beside the image patches they see.",
)
EVOLUTION = Section(
    "evolution",
    "Feature evolution during training",
    "evolution/evolution.json",
    _evolution,
    "Fig. 4: the strongest activation of a few maps per layer at each training snapshot, projected to "
    "pixels (Sec. 4.1).",
)
OCCLUSION = Section(
    "occlusion",
    "Occlusion sensitivity",
    "occlusion/occlusion.json",
    _occlusion,
    "Fig. 6: a grey square slid over each image, the strongest conv map's activity, its projection, and "
    "the classifier's probability and label as a function of where the square is (Sec. 4.2).",
)
EVIDENCE = Section(
    "evidence",
    "Evidence: do the pictures show the units?",
    "evidence/evidence.json",
    _evidence,
    "Per unit, how much its projection depends on the weights (cascading randomization, Adebayo et al. 2018), "
    "how much it differs from other units' projections and the image's edges (Nie et al. 2018), and whether "
    "covering what it shows lowers it (its causal map); for the class-level maps, deletion and insertion curves.",
)
CORRESPONDENCE = Section(
    "correspondence",
    "Correspondence analysis",
    "correspondence/correspondence.json",
    _correspondence,
    "The arXiv version's correspondence table (Sec. 4.3): how consistently masking the same part changes "
    "the features across different images, against random masks.",
)
INVARIANCE = Section(
    "invariance",
    "Feature invariance",
    "invariance/invariance.json",
    _invariance,
    "The arXiv version's invariance figure (Sec. 4.4): feature distance at a low and a high layer and the "
    "true-class probability as the image is translated, scaled and rotated.",
)
INCLUDED = Section(
    "included",
    "Transfer, per-layer and ablation results",
    "included/included.json",
    _included,
    "Tables 2-6 and Fig. 7: architecture ablations, transfer to other datasets and per-layer probes "
    "(Sec. 5), from the result folders given with --include.",
)


def _title(out: str, section: Section) -> str:
    """A section's title naming what it shows (the atlas: its first and last layer)."""
    if section.id != "atlas":
        return section.title
    m = _read(out, "atlas/manifest.json")
    order = m.get("layer_order") if isinstance(m, dict) else None
    if isinstance(order, list) and order:
        return f"{section.title}, {order[0]}" + (f" to {order[-1]}" if len(order) > 1 else "")
    return section.title


def _section(out: str, stage: str, section: Section, stages: dict) -> dict:
    """What the page shows for one section: its stage's entry, and its view or why there is none."""
    entry = stages.get(stage)
    entry = None if entry is None else {"status": "", "reason": "", "traceback": "", **entry}
    shown = {
        "id": section.id,
        "title": _title(out, section),
        "sentence": section.sentence,
        "stage": stage,
        "rel": section.file,
        "entry": entry,
        "badge": (entry or {}).get("status", "missing"),
        "traceback_href": _href((entry or {}).get("traceback", stage + "/error.txt")),
        "error": None,
        "view": None,
    }
    if entry is None or entry.get("status") in ("failed", "skipped"):
        return shown
    try:
        result = _read(out, section.file)
        shown["view"] = None if result is None else section.view(out, result)
    except (KeyError, TypeError, ValueError, IndexError, OSError) as e:  # a damaged result: say so, show the rest
        shown["error"] = f"{type(e).__name__}: {e}"
    return shown


def write_report(out: str, parts: Sequence[tuple[str, Sequence[Section]]]) -> str:
    """OUT/index.html from OUT/report.json and the stage files: `parts` is each stage's name with the sections
    its result feeds, in page order (`zfnet.pipelines.report.page_parts`); a section whose stage failed or was
    skipped shows why. Returns the page's path."""
    state = _read(out, "report.json") or {"stages": {}}
    stages = {k: {"paper": "", "reason": "", "seconds": 0, **v} for k, v in state.get("stages", {}).items()}
    page = render(
        "report.html.j2",
        title=state.get("title", "zfnet report"),
        sections=[_section(out, stage, section, stages) for stage, sections in parts for section in sections],
        stages=stages,
        env={
            "zfnet": "",
            "torch": "",
            "python": "",
            "device": "",
            "threads": "",
            "platform": "",
            **state.get("environment", {}),
        },
        seed=state.get("settings", {}).get("seed", 0),
        wall_seconds=state.get("wall_seconds", 0),
    )
    path = os.path.join(out, "index.html")
    atomic_write_text(path, page)
    return path
