"""`zfnet report`: the whole pipeline on the embedded model and the bundled subset (small), opened in headless
Chromium; stage failure, reuse and refusal; Fig. 3 read from the model against the paper's table."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import REPO, hook_count, needs_chromium, run_cli
from PIL import Image

from zfnet import data as zdata
from zfnet import models
from zfnet.methods.architecture import architecture
from zfnet.pipelines.report import STAGES, page_parts, pick_examples
from zfnet.render.page import markdown_table

SMALL = ("--limit", "300", "--evolution-limit", "200", "--examples", "3")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "rep"
    r = run_cli(
        "report",
        *SMALL,
        "--include",
        os.path.join(REPO, "docs", "transfer"),
        "--include",
        os.path.join(REPO, "docs", "ablation"),
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    return out


def test_every_stage_done(report):
    state = json.loads((report / "report.json").read_text())
    assert [n for n in state["stages"]] == list(STAGES)
    assert {n: e["status"] for n, e in state["stages"].items()} == {n: "done" for n in STAGES}
    model = json.loads((report / "model" / "model.json").read_text())
    assert model["architecture"]["params"] == sum(p.numel() for p in models.build("zfnet-small").parameters())
    assert model["measured"]["images"] == 2000 and 0.85 < 1 - model["measured"]["top1_err"] <= 1
    assert model["stored_metrics"]["centre"]["top1_err"] == pytest.approx(0.0783)
    evo = json.loads((report / "evolution" / "evolution.json").read_text())
    assert evo["epochs"] == [1, 2, 3, 6, 13, 19, 26, 41, 45, 48, 52]
    occ = json.loads((report / "occlusion" / "occlusion.json").read_text())
    assert len({r["label"] for r in occ["images"]}) == 3  # three classes
    ev = json.loads((report / "evidence" / "evidence.json").read_text())
    assert set(ev["summary"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"} and len(ev["reading"]) == 3
    assert ev["logit_cascade"]["steps"][0] == "fc8" and set(ev["faithfulness"]) >= {"occlusion", "deconvnet"}
    atlas = json.loads((report / "atlas" / "manifest.json").read_text())
    scored = sum(len(v) for v in atlas["evidence"]["layers"].values())
    assert scored == sum(1 for l in atlas["layers"].values() for m in l["maps"] if m and m[0]["value"] > 0)
    inc = json.loads((report / "included" / "included.json").read_text())
    assert {r["experiment"].split(" (")[0] for r in inc["results"]} == {"transfer", "Table 2"}


@needs_chromium
def test_report_in_browser(report, browser):
    """Every section renders with its images, every link resolves, no console errors (report and atlas)."""
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # drop earlier pages' messages
    browser.get((report / "index.html").as_uri())
    for sid in (s.id for _, sections in page_parts() for s in sections):
        section = browser.find_element(By.ID, sid)
        assert not section.find_elements(By.CSS_SELECTOR, ".fail, .note"), (sid, section.text[:300])
    for sid in ("model", "filters", "atlas", "evolution", "occlusion", "evidence", "correspondence", "invariance",
                "included"):  # fmt: skip
        assert browser.find_elements(By.CSS_SELECTOR, f"#{sid} img"), sid
    sizes = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const srcs = Array.from(document.images).map(i => i.getAttribute('src'));
        Promise.all(srcs.map(s => new Promise(r => { const im = new Image();
            im.onload = () => r([s, im.naturalWidth]); im.onerror = () => r([s, 0]); im.src = s; })))
          .then(done);""")
    # Fig. 3 + curves, Fig. 5, 5 atlas panels, 5 evolution grids, 3 occlusions each with its map's top 9 from the
    # atlas (Fig. 6 (c)'s "this map from other images"), the evidence (the logit cascade, the faithfulness curves,
    # a figure per layer), correspondence, invariance, 2 included
    assert len(sizes) == 30 and all(w > 0 for _, w in sizes), [s for s, w in sizes if not w]
    others = [s for s, _ in sizes if "atlas/maps/" in s]
    assert len(others) == 3, others
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a[href]")]
    ids = {e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, "[id]")}
    for href in links:
        assert href.startswith("file://"), href
        path, _, frag = href[len("file://") :].partition("#")
        from urllib.parse import unquote

        assert os.path.isfile(unquote(path)), href
        if frag and unquote(path) == str(report / "index.html"):
            assert frag in ids, href
    assert any(h.endswith("atlas/index.html") for h in links)
    assert [m for m in browser.get_log("browser") if m["level"] == "SEVERE"] == []
    browser.get((report / "atlas" / "index.html").as_uri())
    # the viewer draws its map grid from atlas-data.js once the page has loaded: wait for that state (a CI run
    # once looked before it was drawn), with the page's own messages in the failure
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#maps .map"))
    except TimeoutException:
        raise AssertionError(f"the atlas viewer drew no maps: {browser.get_log('browser')}") from None
    assert [m for m in browser.get_log("browser") if m["level"] == "SEVERE"] == []


def test_figures_are_titled(report):
    """Each PNG reads on its own: the evolution grid carries its epochs, panels their layer (a title band)."""
    evo = Image.open(report / "evolution" / "evolution" / "conv2.png").convert("L")
    top = torch.from_numpy(__import__("numpy").asarray(evo.crop((0, 0, evo.width, 16))).astype("float32"))
    assert (top < 100).sum() > 50  # dark title text on the white band
    panel = Image.open(report / "atlas" / "figures" / "conv1.png")
    assert panel.height > 0 and panel.getpixel((2, 2)) == (255, 255, 255)


def test_rerun_reuses_every_stage(report):
    before = {
        p: os.path.getmtime(report / p)
        for p in ("atlas/manifest.json", "model/model.json", "evolution/evolution.json", "occlusion/occlusion.json")
    }
    r = run_cli(
        "report",
        *SMALL,
        "--include",
        os.path.join(REPO, "docs", "transfer"),
        "--include",
        os.path.join(REPO, "docs", "ablation"),
        "--out",
        str(report),
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("reused") == len(list(STAGES)), r.stderr
    assert all(STAGES.get(n).schema for n in STAGES)  # each stage's result is read back with its own schema
    assert {p: os.path.getmtime(report / p) for p in before} == before  # what was done, not how long it took


def test_changed_setting_redoes_only_its_stage(report, tmp_path):
    out = tmp_path / "rep"
    shutil.copytree(report, out)
    r = run_cli(
        "report",
        "--limit",
        "300",
        "--evolution-limit",
        "200",
        "--examples",
        "2",
        "--include",
        os.path.join(REPO, "docs", "transfer"),
        "--include",
        os.path.join(REPO, "docs", "ablation"),
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    redone = [
        l.split("]")[1].split(":")[0].strip() for l in r.stderr.splitlines() if l.startswith("[") and "reused" not in l
    ]
    assert redone == ["occlusion"], r.stderr
    assert len(json.loads((out / "occlusion" / "occlusion.json").read_text())["images"]) == 2


def test_failed_stage_is_shown_and_others_render(tmp_path):
    bad = tmp_path / "parts.json"
    bad.write_text(json.dumps({"images": [0, 1], "parts": {"toe": [[0, 0, 4, 4]]}}))  # one box for two images
    out = tmp_path / "rep"
    r = run_cli("report", "--only", "model,correspondence", "--parts", str(bad), "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("zfnet report: error: stage correspondence failed (")
    assert "Traceback" not in r.stderr
    state = json.loads((out / "report.json").read_text())
    assert state["stages"]["model"]["status"] == "done"
    assert state["stages"]["correspondence"]["status"] == "failed"
    assert "needs one [y0, x0, y1, x1] box per image" in state["stages"]["correspondence"]["reason"]
    page = (out / "index.html").read_text()
    assert "This stage failed:</b> parts file" in page and 'src="model/fig3.png"' in page
    assert (out / "correspondence" / "error.txt").is_file()
    # the fix, then the same command: the failed stage runs again, the finished one is reused
    r = run_cli("report", "--only", "model,correspondence", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "model: Fig. 3 (architecture), Sec. 3 (training) - reused" in r.stderr


def test_other_model_into_the_same_folder_is_refused(report):
    r = run_cli("report", "--model", "zfnet-small", "--data", "fashion-mnist-mini", "--out", str(report))
    assert r.returncode == 2
    assert "holds a report of another model or data (changed: weights_sha256)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_non_report_folder_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = run_cli("report", "--out", str(tmp_path))
    assert r.returncode == 2 and "did not make" in r.stderr
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_any_model_and_data(tmp_path):
    """A user CNN on a folder of images: no snapshots, no parts file -> those stages say why; the rest run."""
    root = tmp_path / "imgs"
    for k, cls in enumerate(["cat", "dog"]):
        os.makedirs(root / "val" / cls)
        os.makedirs(root / "train" / cls)
        for i in range(6):
            for split in ("val", "train"):
                Image.new("RGB", (40, 40), (40 * k + 30 * i, 90, 200 - 25 * i)).save(root / split / cls / f"{i}.png")
    net = models.build("zfnet-small-rgb", num_classes=2)
    from zfnet.weights import default_preprocess, save_weights

    weights = tmp_path / "run" / "model.safetensors"
    os.makedirs(weights.parent)
    pp = default_preprocess(net)
    save_weights(
        net,
        str(weights),
        pp.with_mean(torch.full((3, pp.base_size, pp.base_size), 100.0)),
        classes=json.dumps(["cat", "dog"]),
    )
    out = tmp_path / "rep"
    r = run_cli(
        "report",
        "--model",
        "zfnet-small-rgb",
        "--weights",
        str(weights),
        "--data",
        f"folder:{root}",
        "--examples",
        "2",
        "--layers",
        "conv1,conv3",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    st = {n: e["status"] for n, e in json.loads((out / "report.json").read_text())["stages"].items()}
    assert st == {
        "model": "done",
        "atlas": "done",
        "evolution": "skipped",
        "occlusion": "done",
        "evidence": "done",
        "correspondence": "skipped",
        "invariance": "done",
        "included": "skipped",
    }
    page = (out / "index.html").read_text()
    assert "no training snapshots" in page and "needs a parts file" in page
    # snapshots beside the weights (a training run's folder) turn Fig. 4 on
    os.makedirs(weights.parent / "snapshots")
    for e in (1, 2):
        shutil.copyfile(weights, weights.parent / "snapshots" / f"epoch-{e:03d}.safetensors")
    r = run_cli(
        "report",
        "--model",
        "zfnet-small-rgb",
        "--weights",
        str(weights),
        "--data",
        f"folder:{root}",
        "--examples",
        "2",
        "--layers",
        "conv1,conv3",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    evo = json.loads((out / "evolution" / "evolution.json").read_text())
    assert evo["epochs"] == [1, 2] and evo["dataset"]["split"] == "train"


def test_architecture_is_fig3():
    """ZFNet read from the model matches Fig. 3: maps, filter sizes, strides and output sizes."""
    net = models.build("zfnet")
    arch = architecture(net, torch.zeros(1, 3, 224, 224))
    got = [(l.name, l.out_shape, l.kernel, l.stride) for l in arch.layers if l.kind in ("conv", "pool")]
    assert got == [
        ("conv1", [96, 110, 110], [7, 7], [2, 2]),
        ("pool1", [96, 55, 55], [3, 3], [2, 2]),
        ("conv2", [256, 26, 26], [5, 5], [2, 2]),
        ("pool2", [256, 13, 13], [3, 3], [2, 2]),
        ("conv3", [384, 13, 13], [3, 3], [1, 1]),
        ("conv4", [384, 13, 13], [3, 3], [1, 1]),
        ("conv5", [256, 13, 13], [3, 3], [1, 1]),
        ("pool5", [256, 6, 6], [3, 3], [2, 2]),
    ]
    assert [l.out_shape[0] for l in arch.layers if l.kind == "fc"] == [4096, 4096, 1000]
    assert arch.params == sum(p.numel() for p in net.parameters())
    assert sum(l.params for l in arch.layers) == arch.params  # every parameter sits in a listed layer
    assert arch.layers[0].receptive_field == [7, 7]
    assert hook_count(net) == 0


def test_architecture_of_a_torchvision_model_leaves_it_untouched():
    net = models.build("torchvision:resnet18").train()
    arch = architecture(net, torch.zeros(1, 3, 64, 64))
    assert [l.name for l in arch.layers][:3] == ["conv1", "bn1", "maxpool"]
    assert arch.layers[-1].name == "fc" and arch.layers[-1].out_shape == [1000]
    assert hook_count(net) == 0 and net.training


def test_markdown_is_escaped():
    """The Markdown tables other commands wrote (--include) are read with markdown-it-py, raw HTML escaped."""
    html = markdown_table('### <b>title</b>\n\n| a | <script>x</script> |\n|---|---|\n| `c` | **d** |\n\ntext "q"')
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;title" in html
    assert "<code>c</code>" in html and "<strong>d</strong>" in html and "&quot;q&quot;" in html
    assert html.count("<tr>") == 2


def test_pick_examples_distinct_classes():
    ds = zdata.open_dataset("fashion-mnist-mini", "test", zdata.Preprocess(28, 28, 1, fit="pad"))
    picks = pick_examples(ds, 6)
    assert picks == [0, 1, 2, 4, 6, 8]  # labels 9 2 1 1 6 1 4 6 5: first of each class in order
    assert len({int(ds.labels[i]) for i in picks}) == 6


def test_bundled_subset_is_the_real_data():
    """The bundled images are the first 2,000 of each Fashion-MNIST file, under the full set's ids."""
    from zfnet.data.mnist import DEBIAN_FASHION

    pp = zdata.Preprocess(28, 28, 1, fit="pad")
    mini = zdata.open_dataset("fashion-mnist-mini", "train", pp)
    assert len(mini) == 2000 and mini.image_id(1999) == "fashion-mnist/train/01999"
    if not os.path.isdir(DEBIAN_FASHION):
        if os.environ.get("CI"):  # CI installs it (scripts/setup.sh test): its absence is a broken setup, not a skip
            pytest.fail(f"Debian dataset-fashion-mnist is not installed at {DEBIAN_FASHION} (scripts/setup.sh test)")
        pytest.skip("Debian dataset-fashion-mnist not installed (scripts/setup.sh test installs it)")
    full = zdata.open_dataset("fashion-mnist", "train", pp)
    assert torch.equal(full.bases[:2000], mini.bases) and torch.equal(full.labels[:2000], mini.labels)
    test = zdata.open_dataset("fashion-mnist", "test", pp)
    mini_test = zdata.open_dataset("fashion-mnist-mini", "test", pp)
    assert torch.equal(test.bases[:2000], mini_test.bases) and mini_test.image_id(7) == test.image_id(7)


def test_page_never_links_outside_the_folder(tmp_path):
    """A tampered result file naming ../ paths gets a note, not a link or an image from outside the report."""
    from zfnet.render.page import write_report

    out = tmp_path / "rep"
    os.makedirs(out / "occlusion")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    (out / "occlusion" / "occlusion.json").write_text(
        json.dumps(
            {
                "settings": {"window": 8, "stride": 2, "mode": "exact", "layer": "conv5"},
                "classes": ["a"],
                "images": [
                    {
                        "image": "x",
                        "label": 0,
                        "label_name": "a",
                        "figure": "../../outside.png",
                        "base_class": 0,
                        "base_prob": 0.5,
                        "layer": "conv5",
                        "channel": 1,
                    }
                ],
            }
        )
    )
    (out / "report.json").write_text(json.dumps({"stages": {"occlusion": {"status": "done", "seconds": 1.0}}}))
    page = open(write_report(str(out), page_parts())).read()
    assert page.count("outside.png") == 1 and "missing file occlusion/../../outside.png" in page
    assert 'src="occlusion/../' not in page and 'href="occlusion/../' not in page


def test_accuracy_not_measurable_keeps_the_model_section(tmp_path):
    """Data with more classes than the model: the accuracy row says why (its labels are not the model's classes,
    so the analyses target the predicted class), the rest of the section stands."""
    root = tmp_path / "imgs"
    for k, cls in enumerate(["a", "b", "c"]):
        os.makedirs(root / cls)
        for i in range(2):
            Image.new("RGB", (36, 36), (70 * k, 30 * i, 90)).save(root / cls / f"{i}.png")
    from zfnet.weights import default_preprocess, save_weights

    net = models.build("zfnet-small-rgb", num_classes=2)
    pp = default_preprocess(net)
    weights = tmp_path / "w.safetensors"
    save_weights(net, str(weights), pp.with_mean(torch.full((3, pp.base_size, pp.base_size), 90.0)))
    out = tmp_path / "rep"
    r = run_cli(
        "report",
        "--model",
        "zfnet-small-rgb",
        "--weights",
        str(weights),
        "--data",
        f"folder:{root}",
        "--only",
        "model",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "model" / "model.json").read_text())
    assert m["measured"] is None and "(a, b, c, ...) are not the model's classes" in m["unmeasured"]
    assert m["targets"] == "predicted"
    assert "not measured: " in (out / "index.html").read_text()
