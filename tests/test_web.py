"""The static atlas page in headless Chromium (Debian chromium + chromium-driver): loads from disk, shows
the right number of maps per layer, opening a map shows its k images, no console errors, user strings escaped."""

from __future__ import annotations

import json
import os

import pytest
from conftest import needs_chromium, run_cli
from PIL import Image

from zfnet import models

pytestmark = needs_chromium
EVIL = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """An atlas of a folder dataset whose class and file names carry HTML."""
    root = tmp_path_factory.mktemp("evil")
    for k, cls in enumerate([EVIL, "plain"]):
        os.makedirs(root / "all" / cls)
        for i in range(3):
            Image.new("RGB", (40, 40), (80 * k + 20 * i, 100, 200 - 30 * i)).save(root / "all" / cls / f"{EVIL}{i}.png")
    out = tmp_path_factory.mktemp("atlas") / "out"
    r = run_cli(
        "atlas",
        "--model",
        "zfnet-small-rgb",
        "--data",
        f"folder:{root}",
        "--split",
        "all",
        "--layers",
        "conv1,conv3",
        "--k",
        "3",
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    return out


def test_page_from_disk(atlas, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    manifest = json.loads((atlas / "manifest.json").read_text())
    net = models.build("zfnet-small-rgb")
    c1, c3 = net.conv1.out_channels, net.conv3.out_channels
    browser.get((atlas / "index.html").as_uri())
    maps = browser.find_elements(By.CSS_SELECTOR, "#maps .map")
    assert len(maps) == manifest["layers"]["conv1"]["channels"] == c1
    browser.find_element(By.CSS_SELECTOR, '#layers button[data-layer="conv3"]').click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#maps .map")) == c3
    browser.find_elements(By.CSS_SELECTOR, "#maps .map")[5].click()
    cards = browser.find_elements(By.CSS_SELECTOR, "#cards .card")
    assert len(cards) == 3  # k
    tiles = browser.find_elements(By.CSS_SELECTOR, "#cards .card .tile")
    assert len(tiles) == 6 and "maps/conv3/0005.png" in tiles[0].value_of_css_property("background-image")
    # the sprite the page points at exists on disk and decodes in the browser
    width = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const img = new Image();
        img.onload = () => done(img.naturalWidth); img.onerror = () => done(0);
        img.src = 'maps/conv3/0005.png';""")
    assert width == 3 * manifest["layers"]["conv3"]["tile"][1]
    # keyboard: next map, next layer, close
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element(By.ID, "detail-title").text == "conv3 / map 6"
    body.send_keys(Keys.ESCAPE)
    assert not browser.find_element(By.ID, "detail").is_displayed()
    body.send_keys(Keys.ARROW_UP)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#maps .map")) == c1
    # jump box
    box = browser.find_element(By.ID, "jump")
    box.send_keys("conv3/2" + Keys.ENTER)
    assert browser.find_element(By.ID, "detail-title").text == "conv3 / map 2"
    # user strings are text, never markup
    captions = " ".join(c.text for c in browser.find_elements(By.CSS_SELECTOR, "#cards .caption"))
    assert "<img" in captions and "onerror" in captions
    assert browser.execute_script("return window.__pwned === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "#cards img, #maps img")
    # layer 1: the filter beside its top-k (Fig. 2)
    body.send_keys(Keys.ESCAPE)
    browser.find_element(By.CSS_SELECTOR, '#layers button[data-layer="conv1"]').click()
    browser.find_elements(By.CSS_SELECTOR, "#maps .map")[3].click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cards .card")) == 3 + 1
    ft = browser.find_element(By.CSS_SELECTOR, "#cards .filter-card .tile")
    assert "maps/conv1/filters.png" in ft.value_of_css_property("background-image")
    assert ft.value_of_css_property("background-position").startswith("-")  # filter 3, not filter 0
    # the other tabs (the open map is a dialog over the page: Escape closes it first)
    body.send_keys(Keys.ESCAPE)
    browser.find_element(By.CSS_SELECTOR, '.tab[data-tab="filters"]').click()
    assert browser.find_element(By.CSS_SELECTOR, "#filters-body img").get_attribute("src").endswith("filters.png")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


FIRES = '''
import torch
import torch.nn.functional as F
from torch import nn


class Fires(nn.Module):
    """A 1x1 conv whose map 0 fires on red pixels (R > 0.5), map 1 never, map 2 everywhere."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.c1 = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.c1.weight.zero_()
            self.c1.weight[0, 0] = 1.0
            self.c1.weight[2, 1] = 1.0
            self.c1.bias.copy_(torch.tensor([-0.5, -1000.0, 0.1]))
        self.fc = nn.Linear(3 * 40 * 40, num_classes)

    def forward(self, x):
        return self.fc(F.relu(self.c1(x)).flatten(1))
'''


def test_a_map_that_fired_on_fewer_than_k_images_shows_only_those(tmp_path, browser):
    """Issue 40, item 8: top-k lists hold only the images where the unit fired, with the count; the viewer cuts
    each sprite by its own entries, says "3/5" and "never fired", and opens a map with as many cards as it has."""
    from selenium.webdriver.common.by import By

    (tmp_path / "fires_net.py").write_text(FIRES)
    root = tmp_path / "data"
    os.makedirs(root / "all" / "any")
    for i, red in enumerate([204, 51, 204, 51, 204, 51]):  # three red images, three not
        Image.new("RGB", (40, 40), (red, 100, 100)).save(root / "all" / "any" / f"{i}.png")
    out = tmp_path / "atlas"
    r = run_cli("atlas", "--model", "fires_net:Fires", "--normalize", "none", "--input-size", "40", "--data",
                f"folder:{root}", "--split", "all", "--layers", "c1", "--k", "5", "--out", str(out), "--workers", "0",
                "--no-progress", env={"PYTHONPATH": str(tmp_path)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    entries = manifest["layers"]["c1"]["maps"]
    assert [len(e) for e in entries] == [3, 0, 5]
    assert sorted(e["image"] for e in entries[0]) == [0, 2, 4] and all(e["value"] > 0 for e in entries[0])
    assert not (out / "maps" / "c1" / "0001.png").exists()
    browser.get((out / "index.html").as_uri())
    labels = [m.text for m in browser.find_elements(By.CSS_SELECTOR, "#maps .map")]
    assert labels[0].endswith("(3/5)") and labels[1] == "#1 never fired" and "(" not in labels[2]
    assert "silent" in browser.find_elements(By.CSS_SELECTOR, "#maps .map .thumb")[1].get_attribute("class")
    for channel, n in [(0, 3), (1, 0), (2, 5)]:
        browser.find_elements(By.CSS_SELECTOR, "#maps .map")[channel].click()
        cards = browser.find_elements(By.CSS_SELECTOR, "#cards .card:not(.filter-card)")
        assert len(cards) == n, channel
        said = browser.find_elements(By.CSS_SELECTOR, "#cards .fired")
        assert [p.text for p in said] == (
            [f"map {channel} fired on {n} of the 6 images (top 5 asked)"] if n < 5 else []
        )
        if n:  # the sprite is cut into n columns: its background is n tiles wide
            tile = cards[0].find_element(By.CSS_SELECTOR, ".tile")
            width = float(tile.value_of_css_property("width")[:-2])
            size = tile.value_of_css_property("background-size").split()[0]
            assert float(size[:-2]) == pytest.approx(n * width, abs=1)
        browser.find_element(By.TAG_NAME, "body").send_keys("\ue00c")  # Escape
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_atlas_with_evidence_scores_every_map_and_sorts_by_them(tmp_path, browser):
    """`zfnet atlas --evidence --visualize`: every map that fired has its scores (the same as `zfnet.evidence` on its
    top-1 image at its top-1 place) and its causal map on disk; its page shows them against the layer's medians,
    and the layer page sorts by a score; every map has its optimized image on its page (issue 37)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    import zfnet
    from zfnet import data as zdata
    from zfnet.methods.evidence import UnitAt
    from zfnet.pipelines.evidence import ATLAS_EVIDENCE, unit_scores

    out = tmp_path / "atlas"
    r = run_cli("atlas", "--pretrained", "--data", "fashion-mnist-mini", "--layers", "conv1,conv3", "--evidence",
                "--visualize", "--visualize-steps", "8", "--out", str(out), "--workers", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    ev = m["evidence"]
    for layer in ("conv1", "conv3"):
        fired = [c for c, e in enumerate(m["layers"][layer]["maps"]) if e and e[0]["value"] > 0]
        assert sorted(map(int, ev["layers"][layer])) == fired
        for c in fired:
            assert (out / ev["layers"][layer][str(c)]["causal"]).is_file()
    p = zfnet.pretrained()
    ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess)
    top = m["layers"]["conv3"]["maps"][7][0]
    x = p.preprocess.eval_input(ds.bases[top["image"] : top["image"] + 1])
    again = zfnet.evidence(p, x, at=[UnitAt("conv3", 7, 0, (top["y"], top["x"]))], settings=ATLAS_EVIDENCE,
                           rules=("deconvnet",))  # fmt: skip
    want = unit_scores(again.to_json()["units"][0], "deconvnet")
    got = {k: v for k, v in ev["layers"]["conv3"]["7"].items() if k in want}
    assert got == pytest.approx(want, abs=1e-6)

    browser.get((out / "index.html").as_uri())
    browser.find_element(By.CSS_SELECTOR, '#layers button[data-layer="conv3"]').click()
    assert browser.find_element(By.ID, "sort-box").is_displayed()
    Select(browser.find_element(By.ID, "sort")).select_by_value("agreement")
    order = [int(e.get_attribute("data-channel")) for e in browser.find_elements(By.CSS_SELECTOR, "#maps .map")]
    scores = ev["layers"]["conv3"]
    scored = [c for c in order if str(c) in scores and scores[str(c)]["agreement"] is not None]
    values = [scores[str(c)]["agreement"] for c in scored]
    assert values == sorted(values, reverse=True) and order[: len(scored)] == scored
    browser.find_elements(By.CSS_SELECTOR, "#maps .map")[0].click()
    card = browser.find_element(By.ID, "evidence")
    cells = [td.text for td in card.find_elements(By.CSS_SELECTOR, "tr td")]
    assert cells[:2] == ["weight ssim", f"{scores[str(order[0])]['weight_ssim']:.2f}"]
    median = ev["summary"]["conv3"]["deconvnet"]["agreement"]
    assert cells[-3:] == ["agreement", f"{scores[str(order[0])]['agreement']:.2f}", f"{median:.2f}"]
    width = browser.execute_script("return document.querySelector('#evidence img.causal').naturalWidth")
    assert width > 0
    # issue 37: the map's optimized image beside its top-k, its value the channel mean zfnet.visualize gives
    vis = m["visualized"]["conv3"]["maps"][str(order[0])]
    assert (out / vis["file"]).is_file() and len(m["visualized"]["conv3"]["maps"]) == m["layers"]["conv3"]["channels"]
    again = zfnet.visualize(p, layer="conv3", units=tuple(range(m["layers"]["conv3"]["channels"])), steps=8, batch=64)
    assert vis["value"] == again.values[order[0]]  # the same seed and batches: the same image, bit for bit
    assert browser.execute_script("return document.querySelector('#visualized img.optimized').naturalWidth") > 0
    shots = os.environ.get("ZFNET_SCREENSHOTS")  # the README's picture of a unit page with its evidence
    if shots:
        os.makedirs(shots, exist_ok=True)
        browser.set_window_size(1100, 760)
        browser.save_screenshot(os.path.join(shots, "atlas-evidence.png"))
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
