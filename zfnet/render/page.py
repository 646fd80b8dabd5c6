"""OUT/index.html of `zfnet report`: one static page (works from the file system, no network) with a table of
contents and one section per part of the paper, built only from the files the stages wrote (report.json,
model/model.json, atlas/manifest.json, ...). Every string from those files is HTML-escaped."""

from __future__ import annotations

import os
import re
from html import escape

from ..io import atomic_write_text

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1d3557;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:24px}
header p{margin:0;opacity:.85}header code{background:rgba(255,255,255,.15);color:#fff}
main{display:flex;gap:28px;padding:0 28px 40px}
nav.toc{position:sticky;top:0;align-self:flex-start;min-width:230px;max-width:260px;padding:16px 0;font-size:14px}
nav.toc ol{padding-left:20px}nav.toc a{color:#1d3557;text-decoration:none}nav.toc a:hover{text-decoration:underline}
.content{flex:1;min-width:0}section{background:#fff;border:1px solid #e3e3e3;border-radius:8px;margin:18px 0;
padding:6px 22px 18px}h2{font-size:20px;margin:14px 0 6px}h3{font-size:16px;margin:16px 0 6px}
p.paper{color:#555;margin-top:0}figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eee;
image-rendering:auto}figcaption{font-size:13px;color:#555}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f1f4f8}td.num{text-align:right}
.status{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;font-weight:600}
.done{background:#d8f3dc;color:#1b4332}.failed{background:#ffd6d6;color:#8b0000}.skipped{background:#eee;color:#555}
.missing{background:#fff3cd;color:#7a5b00}.note{background:#fff8e1;border-left:4px solid #f4a261;padding:6px 12px}
.fail{background:#fff0f0;border-left:4px solid #c0392b;padding:6px 12px}code{background:#f3f3f3;padding:0 3px}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{flex:1 1 420px}
footer{padding:0 28px 30px;color:#666;font-size:12px}
"""


def _e(v) -> str:
    return escape(str(v), quote=True)


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


def _img(out: str, rel: str, caption: str = "", alt: str = "") -> str:
    if not isinstance(rel, str) or not _inside(out, rel) or not os.path.isfile(os.path.join(out, rel)):
        return f'<p class="note">missing file {_e(rel)}</p>'
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><a href="{_href(rel)}"><img src="{_href(rel)}" alt="{_e(alt or caption or rel)}" '
        f'loading="lazy"></a>{cap}</figure>'
    )


def _pct(err) -> str:
    return "-" if err is None else f"{100 * (1 - float(err)):.2f}%"


def markdown(text: str) -> str:
    """The Markdown zfnet writes (headings, paragraphs, pipe tables, `code`, **bold**) as escaped HTML."""

    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)

    html: list[str] = []
    para: list[str] = []
    table: list[str] = []

    def flush():
        if para:
            html.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|?[\s:|-]+\|?", r)]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            if cells:
                head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
                body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
                html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            if para:
                flush()
            table.append(s)
            continue
        if table:
            flush()
        m = re.match(r"(#{1,6})\s+(.*)", s)
        if m:
            flush()
            html.append(f"<h4>{inline(m.group(2))}</h4>")
        elif not s:
            flush()
        else:
            para.append(s)
    flush()
    return "\n".join(html)


def _status_box(entry: dict | None, stage: str) -> str | None:
    """The note shown instead of a section whose stage did not finish."""
    if entry is None:
        return f'<p class="note">The {_e(stage)} stage has not run yet (rerun zfnet report).</p>'
    if entry.get("status") == "failed":
        return (
            f'<p class="fail"><b>This stage failed:</b> {_e(entry.get("reason", ""))} '
            f'(details: <a href="{_href(entry.get("traceback", stage + "/error.txt"))}">'
            f"{_e(entry.get('traceback', ''))}</a>)</p>"
        )
    if entry.get("status") == "skipped":
        return f'<p class="note"><b>Not run:</b> {_e(entry.get("reason", ""))}</p>'
    return None


# --- sections ---------------------------------------------------------------------------------------------


def _model(out: str, m: dict) -> str:
    arch = m["architecture"]
    rows = [
        ("parameters", f"{arch['params']:,}"),
        ("input", "x".join(str(v) for v in arch["input_shape"])),
        (
            "weights",
            f"{m.get('weights') or 'random initialization'}"
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
    st = m.get("stored_metrics")
    if st:
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
    if m.get("recipe"):
        r = m["recipe"]
        rows.append(
            (
                "recipe",
                ", ".join(
                    f"{k} {v}"
                    for k, v in r.items()
                    if k in ("data", "epochs", "batch_size", "lr", "seed") or k == "model"
                ),
            )
        )
    classes = m.get("classes") or []
    if classes:
        rows.append(("classes", ", ".join(str(c) for c in classes[:20]) + (" ..." if len(classes) > 20 else "")))
    facts = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    head = (
        "<tr><th>layer</th><th>kind</th><th>maps / units</th><th>filter</th><th>stride</th><th>pad</th>"
        "<th>output</th><th>parameters</th><th>receptive field</th></tr>"
    )
    body = ""
    for l in arch["layers"]:
        shape = l["out_shape"]
        body += (
            "<tr>"
            + "".join(
                f"<td>{_e(v)}</td>"
                for v in (
                    l["name"],
                    l["kind"] + (f" ({l['detail']})" if l.get("detail") else ""),
                    shape[0],
                    "x".join(map(str, l["kernel"])) if l.get("kernel") else "",
                    "x".join(map(str, l["stride"])) if l.get("stride") else "",
                    "x".join(map(str, l["padding"])) if l.get("padding") else "",
                    "x".join(map(str, shape)),
                    f"{l['params']:,}",
                    "x".join(map(str, l["receptive_field"])) if l.get("receptive_field") else "",
                )
            )
            + "</tr>"
        )
    html = _img(
        out,
        "model/" + m["figure"],
        "Fig. 3 layout of this model: each layer's maps, filter size, stride and output size, read from the model",
        "architecture",
    )
    html += f"<table>{facts}</table><h3>Layers</h3><table><thead>{head}</thead><tbody>{body}</tbody></table>"
    if m.get("curves"):
        html += "<h3>Training curves</h3>" + _img(
            out,
            "model/" + m["curves"],
            "errors, losses and learning rate per epoch of the training run",
            "training curves",
        )
    else:
        html += '<p class="note">No training history (metrics.jsonl) beside the weights: no curves.</p>'
    return html


def _filters(out: str, f: dict) -> str:
    html = _img(
        out,
        "atlas/" + f["figure"],
        "Fig. 5: the filters (each contrast-stretched), RMS per filter with "
        "dominant ones in red and dead ones in grey, spatial frequency spread",
        "layer-1 filters",
    )
    for m in f["models"]:
        s = m["summary"]
        items = [
            ("filters", f"{s['filters']} of {s['kernel'][0]}x{s['kernel'][1]} x {s['in_channels']}"),
            ("dominant (RMS >= 3 x median, Fig. 5 (c))", f"{s['dominant']} ({100 * s['dominant_share']:.0f}%)"),
            ("share of energy in the strongest filter", f"{100 * s['energy_share_of_strongest']:.1f}%"),
            ("mean spatial frequency (cycles/px)", f"{s['frequency_mean']:.3f}"),
        ]
        if "dead" in s:
            items.append(
                (
                    "dead (never respond on the scanned images, Fig. 5 (a))",
                    f"{s['dead']} ({100 * s['dead_share']:.0f}%)",
                )
            )
        html += "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items) + "</table>"
    return html


def _atlas(out: str, m: dict) -> str:
    ds = m["dataset"]
    html = (
        f"<p>{_e(ds['images'])} images of {_e(ds['spec'])} ({_e(ds['split'])}) scanned. "
        f'<a href="atlas/index.html">Browse every map of every layer</a> in the atlas viewer (keys: arrows, '
        "/ to jump).</p>"
    )
    for layer in m["layer_order"]:
        info = m["layers"].get(layer, {})
        rf = info.get("field")
        cap = (
            (
                f"{layer}: {info.get('channels', '?')} maps, receptive field {rf[0]}x{rf[1]} px; "
                f"maps {', '.join(str(c) for c in m.get('panel_maps', {}).get(layer, []))}"
            )
            if rf
            else layer
        )
        if layer in m.get("figures", {}):
            html += f"<h3>{_e(layer)}</h3>" + _img(out, "atlas/" + m["figures"][layer], cap, f"{layer} panel")
    return html


def _evolution(out: str, e: dict) -> str:
    ds = e["dataset"]
    html = (
        f"<p>Snapshots at epochs {_e(', '.join(str(x) for x in e['epochs']))}; each column the strongest "
        f"activation over {_e(ds['images'])} {_e(ds['spec'])} {_e(ds['split'])} images at that epoch.</p>"
    )
    for layer, rel in e["figures"].items():
        html += f"<h3>{_e(layer)}</h3>" + _img(
            out,
            "evolution/" + rel,
            f"{layer}: maps {', '.join(str(c) for c in e['channels'][layer])} (rows) by epoch (columns)",
            f"{layer} evolution",
        )
    return html


def _occlusion(out: str, o: dict) -> str:
    s = o["settings"]
    classes = o.get("classes") or []

    def name(c):
        return classes[c] if c is not None and 0 <= c < len(classes) else str(c)

    ran = sorted({r.get("computation") or f"{r.get('mode')} computation" for r in o["images"]})
    first = o["images"][0] if o["images"] else {}
    if first.get("fill") == "grey" and first.get("fill_pixels"):
        fill = (
            "the training mean pixel (grey " + "/".join(f"{v:g}" for v in first["fill_pixels"]) + "), pasted in pixels"
        )
    elif first.get("fill") == "mean-image" or s.get("fill") in (0, 0.0):
        fill = "the mean image (0 in model-input units)"
    else:
        fill = "pixel values " + "/".join(f"{v:g}" for v in first.get("fill_pixels") or [])
    html = (
        f"<p>Occluder {_e(s['window'])}x{_e(s['window'])} px, stride {_e(s['stride'])}, filled with "
        f"{_e(fill)}; layer {_e(s['layer'])}; {_e('; '.join(ran))}.</p>"
    )
    if any(r.get("target_source") == "predicted" for r in o["images"]):
        html += (
            "<p class=\"note\">The data's labels are not the model's classes: (d) maps the probability of the "
            "class the model predicts on the unoccluded image.</p>"
        )
    html += '<div class="grid">'
    for r in o["images"]:
        if r.get("target_source") == "predicted":
            cap = f"{r['image']}: predicted {name(r['base_class'])} (p {r['base_prob']:.2f})"
        else:
            cap = (
                f"{r['image']}: true class {r.get('label_name') or name(r.get('label'))}, predicted "
                f"{name(r['base_class'])} (p(true) {r['base_prob']:.2f})"
            )
        cap += f"; strongest map {r['layer']}/{r['channel']}"
        html += _img(out, "occlusion/" + r["figure"], cap, f"occlusion of {r['image']}")
        # Fig. 6 (c) also shows "visualizations of this map from other images": the atlas's top-9 of the map
        others = f"atlas/maps/{r['layer']}/{int(r['channel']):04d}.png"
        if _inside(out, others) and os.path.isfile(os.path.join(out, others)):
            html += _img(
                out, others, f"(c) continued: {r['layer']} map {r['channel']} on other images (the atlas's top 9)"
            )
    return html + "</div>"


def _correspondence(out: str, c: dict) -> str:
    html = ""
    path = os.path.join(out, "correspondence", c.get("table", ""))
    if c.get("table") and _inside(out, os.path.relpath(path, out)) and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            html += markdown(f.read())
    html += (
        "<p>Lower than random = the part is encoded consistently across images (implicit correspondence). "
        "Sign change of the feature difference vectors, Hamming distance averaged over image pairs.</p>"
    )
    return html + _img(out, "correspondence/" + c["figure"], "the masked images as the model sees them", "masks")


def _invariance(out: str, v: dict) -> str:
    classes = v.get("classes") or []
    predicted = v.get("predicted") or [False] * len(v["labels"])
    names = ", ".join(
        f"{i} ({'predicted ' if p else ''}{classes[l] if l is not None and l < len(classes) else l})"
        for i, l, p in zip(v["images"], v["labels"], predicted)
    )
    html = f"<p>Images: {_e(names)}. Layers {_e(' and '.join(v['layers']))}; {_e(v['interpolation'])}.</p>"
    target = "p(predicted class)" if predicted and all(predicted) else "p(true class)"
    return html + _img(
        out,
        "invariance/" + v["figure"],
        "rows: translation, scaling, rotation; columns: examples, "
        f"feature distance at {' and '.join(v['layers'])}, {target}",
        "invariance",
    )


def _included(out: str, inc: dict) -> str:
    html = ""
    for r in inc["results"]:
        html += f"<h3>{_e(r['experiment'])}</h3><p>from <code>{_e(r['source'])}</code></p>"
        if r.get("summary"):
            html += f"<p>{_e(r['summary'])}</p>"
        if r.get("table") and _inside(out, os.path.join("included", r["table"])):
            with open(os.path.join(out, "included", r["table"]), encoding="utf-8") as f:
                html += markdown(f.read())
        for fig in r.get("figures", []):
            html += _img(out, "included/" + fig, "", r["experiment"])
    return html


SECTIONS = [  # id, title, the stage it reads, the file, its renderer, the sentence naming the part of the paper
    (
        "model",
        "The model",
        "model",
        "model/model.json",
        _model,
        "The architecture drawn as Fig. 3 draws ZFNet, read from the model itself, with its parameters, accuracy "
        "and training curves (Sec. 3).",
    ),
    (
        "filters",
        "Layer-1 filters",
        "atlas",
        "atlas/filters.json",
        _filters,
        "The first layer's filters and their diagnostics, as Fig. 5 uses them to choose the architecture "
        "(dominant filters, dead filters, frequency coverage; Sec. 4.1).",
    ),
    (
        "atlas",
        "Top-9 atlas",
        "atlas",
        "atlas/manifest.json",
        _atlas,
        "Fig. 2: for each feature map its 9 strongest activations over the images, projected to pixels by the "
        "deconvnet (Sec. 2.1), beside the image patches they see.",
    ),
    (
        "evolution",
        "Feature evolution during training",
        "evolution",
        "evolution/evolution.json",
        _evolution,
        "Fig. 4: the strongest activation of a few maps per layer at each training snapshot, projected to pixels "
        "(Sec. 4.1).",
    ),
    (
        "occlusion",
        "Occlusion sensitivity",
        "occlusion",
        "occlusion/occlusion.json",
        _occlusion,
        "Fig. 6: a grey square slid over each image, the strongest conv map's activity, its projection, and the "
        "classifier's probability and label as a function of where the square is (Sec. 4.2).",
    ),
    (
        "correspondence",
        "Correspondence analysis",
        "correspondence",
        "correspondence/correspondence.json",
        _correspondence,
        "The arXiv version's correspondence table (Sec. 4.3): how consistently masking the same part changes the "
        "features across different images, against random masks.",
    ),
    (
        "invariance",
        "Feature invariance",
        "invariance",
        "invariance/invariance.json",
        _invariance,
        "The arXiv version's invariance figure (Sec. 4.4): feature distance at a low and a high layer and the "
        "true-class probability as the image is translated, scaled and rotated.",
    ),
    (
        "included",
        "Transfer, per-layer and ablation results",
        "included",
        "included/included.json",
        _included,
        "Tables 2-6 and Fig. 7: architecture ablations, transfer to other datasets and per-layer probes (Sec. 5), "
        "from the result folders given with --include.",
    ),
]


def _title(out: str, sid: str, title: str) -> str:
    """A section's title naming what it shows (the atlas: its first and last layer)."""
    if sid != "atlas":
        return title
    m = _read(out, "atlas/manifest.json")
    order = m.get("layer_order") if isinstance(m, dict) else None
    if isinstance(order, list) and order:
        return f"{title}, {order[0]}" + (f" to {order[-1]}" if len(order) > 1 else "")
    return title


def _section(out: str, rel: str, render) -> str:
    result = _read(out, rel)
    return f'<p class="note">{_e(rel)} is missing.</p>' if result is None else render(out, result)


def write_report(out: str) -> str:
    """OUT/index.html from OUT/report.json and the stage files; a section whose stage failed or was skipped
    shows why. Returns the page's path."""
    state = _read(out, "report.json") or {"stages": {}}
    stages = state.get("stages", {})
    toc, body = [], []
    for sid, title, stage, rel, render, sentence in SECTIONS:
        title = _title(out, sid, title)
        entry = stages.get(stage)
        badge = (entry or {}).get("status", "missing")
        toc.append(f'<li><a href="#{sid}">{_e(title)}</a> <span class="status {badge}">{_e(badge)}</span></li>')
        box = _status_box(entry, stage)
        try:
            inner = box if box is not None else _section(out, rel, render)
        except (KeyError, TypeError, ValueError, OSError) as e:  # a damaged result file: say so, render the rest
            inner = f'<p class="fail">cannot show this section: {_e(type(e).__name__)}: {_e(e)}</p>'
        body.append(f'<section id="{sid}"><h2>{_e(title)}</h2><p class="paper">{_e(sentence)}</p>{inner}</section>')
    rows = "".join(
        f'<tr><td>{_e(n)}</td><td>{_e(e.get("paper", ""))}</td><td><span class="status {_e(e.get("status"))}">'
        f'{_e(e.get("status"))}</span></td><td class="num">{e.get("seconds", 0):.1f} s</td>'
        f"<td>{_e(e.get('reason', ''))}</td></tr>"
        for n, e in stages.items()
    )
    env = state.get("environment", {})
    settings = state.get("settings", {})
    prov = (
        f"<table><thead><tr><th>stage</th><th>paper</th><th>status</th><th>time</th><th>note</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f"<p>Total {state.get('wall_seconds', 0):.1f} s. zfnet {_e(env.get('zfnet', '?'))}, torch "
        f"{_e(env.get('torch', '?'))}, python {_e(env.get('python', '?'))}, device {_e(env.get('device', '?'))}, "
        f"{_e(env.get('threads', '?'))} threads; seed {_e(settings.get('seed', 0))}. Settings and per-stage "
        f'results: <a href="report.json">report.json</a>.</p>'
    )
    body.append(
        f'<section id="provenance"><h2>Stages and provenance</h2><p class="paper">How each part was made, '
        f"how long it took, and what it ran on.</p>{prov}</section>"
    )
    toc.append('<li><a href="#provenance">Stages and provenance</a></li>')
    title = state.get("title", "zfnet report")
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width, initial-scale=1"><title>zfnet report: {_e(title)}</title>'
        f"<style>{CSS}</style></head><body><header><h1>Visualizing and Understanding {_e(title)}</h1>"
        f"<p>Zeiler &amp; Fergus, ECCV 2014, reproduced by zfnet on this model: every figure below was computed "
        f'by <code>zfnet report</code>.</p></header><main><nav class="toc"><b>Contents</b><ol>{"".join(toc)}'
        f'</ol></nav><div class="content">{"".join(body)}</div></main><footer>zfnet report, '
        f"{_e(env.get('platform', ''))}</footer></body></html>\n"
    )
    path = os.path.join(out, "index.html")
    atomic_write_text(path, page)
    return path
