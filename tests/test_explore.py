"""Issue 24: `zfnet explore`, the live toolbox, and `zfnet serve` on the same server.

The server runs as the user starts it (`python -m zfnet explore --port 0`, on 127.0.0.1) over the embedded model,
its bundled images and an atlas made with per-class references. Its answers are checked against the library
called directly (prediction, feature maps, projection, occlusion); bad requests are one JSON line and the server
keeps serving; uploads are capped and decoded with the CLI's guards; nothing outside the assets and the atlas
folder is reachable; 8 clients at once get the answers one client gets; Ctrl-C stops it cleanly. In headless
Chromium: pick an image, step through the layers, click a map, switch the rectification, open the atlas's top-9
and a class's references, run occlusion, upload a PNG and a corrupt file; the address reproduces the view. With
ZFNET_SCREENSHOTS=DIR the browser test saves the README's screenshots there."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, needs_chromium
from PIL import Image
from servers import ServerProcess, headers, opened

import zfnet
from zfnet import data as zdata
from zfnet.layers import features
from zfnet.methods.deconvnet import Deconvnet, Target
from zfnet.pipelines.explore import forget_finished


def start_server(*args: str) -> tuple[ServerProcess, str]:
    """`python -m zfnet ARGS --port 0`; returns the server and the URL it printed (printed once it listens)."""
    proc = ServerProcess(*args)
    return proc, proc.url()


def stop(proc: ServerProcess) -> int:
    """Ctrl-C, as a user stops it; its exit status (a server that does not stop fails the test)."""
    return proc.stop()


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers(url)), timeout=120) as r:
            return r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("content-type", "")


def post(url: str, body: bytes = b"") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers(url))
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get_json(url: str) -> tuple[int, dict]:
    status, body, _ = get(url)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    """An atlas of the embedded model over 300 of its bundled test images, with 2 references per class."""
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    r = subprocess.run(
        [sys.executable, "-m", "zfnet", "atlas", "--pretrained", "--data", "fashion-mnist-mini", "--limit", "300",
         "--per-class", "2", "--max-maps", "6", "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, ZFNET_PROGRESS="0"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """An activation index of the embedded model over its first 500 bundled test images (issue 39)."""
    from zfnet.pipelines.index import IndexSettings, build_index
    from zfnet.pretrained import open_embedded
    from zfnet.settings import Run

    p = open_embedded()
    out = tmp_path_factory.mktemp("index") / "idx"
    ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess)
    build_index(p, ds, str(out), IndexSettings(limit=500), Run(batch_size=250))
    return out


@pytest.fixture(scope="module")
def server(atlas_dir, index_dir):
    proc, url = start_server("explore", "--atlas", str(atlas_dir), "--index", str(index_dir))
    with proc:
        yield url
        assert stop(proc) == 0  # Ctrl-C stops it cleanly (status 0, no traceback)
        assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def reference():
    """The same model and images, called directly."""
    p = zfnet.pretrained()
    ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess)
    return p, ds


def png_file(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_answers_equal_the_library_called_directly(server, reference):
    p, ds = reference
    status, info = get_json(server + "api/info")
    assert (
        status == 200
        and info["model"] == "zfnet-small"
        and info["layers"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    )
    assert info["atlas"]["per_class"] and info["atlas"]["same_data"] and info["dataset"]["images"] == 2000
    _, pg = get_json(server + "api/dataset?page=1")
    assert [it["index"] for it in pg["items"]] == list(range(48, 96)) and pg["pages"] == 42
    assert pg["items"][0]["label"] == ds.classes[int(ds.labels[48])]
    x = p.preprocess.eval_input(ds.bases[7:8])
    with torch.no_grad():
        probs = F.softmax(p.model.eval()(x), 1)[0]
        maps = features(p.model, x, ["conv3"])["conv3"][0]
    _, pred = get_json(server + "api/predict/d7")
    top = probs.topk(5)
    assert [t["class"] for t in pred["top"]] == top.indices.tolist()
    assert [t["p"] for t in pred["top"]] == pytest.approx(top.values.tolist(), abs=1e-6)
    _, layer = get_json(server + "api/layer/d7/conv3")
    assert layer["channels"] == maps.shape[0]
    best, where = maps.flatten(1).max(1)
    assert [m[0] for m in layer["maps"]] == pytest.approx([round(float(v), 4) for v in best], abs=1e-4)
    status, grid, kind = get(server + "api/layer/d7/conv3.png")
    g = layer["grid"]
    img = Image.open(io.BytesIO(grid))
    assert status == 200 and kind == "image/png" and img.width == g["pad"] + g["cols"] * g["cell"][1]
    # the projection of map 5 from its strongest unit, as the deconvnet gives it
    c = 5
    y, xx = int(where[c]) // maps.shape[-1], int(where[c]) % maps.shape[-1]
    _, proj = get_json(server + f"api/project/d7/conv3/{c}?rule=guided")
    assert proj["unit"] == [y, xx] and proj["activation"] == pytest.approx(float(maps[c, y, xx]), rel=1e-5)
    shown = Image.open(io.BytesIO(base64.b64decode(proj["projection"].split(",", 1)[1])))
    with Deconvnet(p.model, rule="guided") as dn:
        want = dn.project_targets(x, [Target(0, "conv3", c, y, xx)])[0]
    import numpy as np

    from zfnet.render.explore import projection_image

    assert np.array_equal(np.asarray(shown), np.asarray(projection_image(want)))  # the same picture, pixel for pixel
    _, unit = get_json(server + f"api/project/d7/conv3/{c}?rule=deconvnet&y=0&x=0")
    assert unit["unit"] == [0, 0] and unit["activation"] == pytest.approx(float(maps[c, 0, 0]), abs=1e-6)


def test_a_units_evidence_equals_the_method_called_directly(server, reference):
    """Issue 36 in the explorer: the clicked unit's scores are `zfnet.evidence` on the same image and unit; a
    second ask is the cached answer; a unit outside the map is one line, 400."""
    from zfnet.methods.evidence import UnitAt
    from zfnet.pipelines.evidence import unit_scores

    p, ds = reference
    status, e = get_json(server + "api/evidence/d3/conv2/4?y=2&x=5")
    assert status == 200 and e["unit"] == [2, 5] and e["causal"].startswith("data:image/png;base64,")
    x = p.preprocess.eval_input(ds.bases[3:4])
    want = zfnet.evidence(p, x, at=[UnitAt("conv2", 4, 0, (2, 5))]).to_json()["units"][0]
    for rule in ("deconvnet", "guided", "backprop"):
        assert e["scores"][rule] == pytest.approx(unit_scores(want, rule), abs=1e-6)
    assert e["cascade"]["guided"][-1]["randomized"] == "conv1"
    assert get_json(server + "api/evidence/d3/conv2/4?y=2&x=5")[1] == e
    status, bad = get_json(server + "api/evidence/d3/conv2/4?y=99&x=0")
    assert status == 400 and bad["error"] == "unit 99,0 is outside conv2's 14x14 maps"


def test_a_maps_optimized_image_is_a_job_equal_to_zfnet_visualize(server, reference):
    """Issue 37 in the explorer: POST /api/visualize/{layer}/{map} starts a job; its result is zfnet.visualize's
    (the same value); a map that does not exist is one line, 400, before any job."""
    from zfnet.pipelines.explore import VISUALIZE_STEPS

    p, _ = reference

    def job(path: str) -> dict:
        status, started = post(server + path)
        assert status == 200, started
        for _ in range(600):
            _, s = get_json(server + f"api/job/{started['job']}")
            if s["result"] or s["error"]:
                return s
            time.sleep(0.2)
        raise AssertionError("the job did not finish")

    s = job("api/visualize/conv2/7")
    assert s["error"] is None and s["result"]["image"].startswith("data:image/png;base64,")
    want = zfnet.visualize(p, layer="conv2", units=(7,), steps=VISUALIZE_STEPS)
    assert s["result"]["value"] == want.values[0] and s["done"] == s["total"] == VISUALIZE_STEPS
    # a clicked unit: the neuron objective at that position
    s = job("api/visualize/conv2/7?y=3&x=4")
    want = zfnet.visualize(p, layer="conv2", units=(7,), steps=VISUALIZE_STEPS, objective="neuron", position=(3, 4))
    assert s["result"]["value"] == want.values[0] and s["result"]["unit"] == [3, 4]
    status, bad = post(server + "api/visualize/conv2/999")
    assert status == 400 and bad["error"] == "map 999 does not exist in conv2 (96 maps: 0..95)"
    status, bad = post(server + "api/visualize/conv2/7?y=3")
    assert status == 400 and bad["error"].startswith("the unit y=3, x=None must be inside conv2's")


def test_the_index_gives_a_units_images_and_an_images_units(server, index_dir):
    """Issue 39 in the explorer: a unit's images over the whole index (paged, within a class) and an image's units
    are the index's own answers; the dataset's images come with their keys; an upload is not in the index."""
    from zfnet.pipelines.index import open_index

    idx = open_index(str(index_dir))
    status, r = get_json(server + "api/index/top/conv5/3?k=4&page=1&class=7")
    assert status == 200
    want = idx.top("conv5", 3, 4, label=7, offset=4).to_pylist()
    assert [row["image"] for row in r["rows"]] == [w["image"] for w in want]
    assert [row["value"] for row in r["rows"]] == [w["value"] for w in want]
    assert all(row["key"] == f"d{row['index']}" and row["label"] == 7 for row in r["rows"])
    status, u = get_json(server + "api/index/units/d7?k=2")
    assert status == 200 and u["rows"] == idx.units_of(7, 2).to_pylist()
    status, body = post(server + "api/upload?name=x.png", png_file(np.full((28, 28), 9, np.uint8)))
    status, bad = get_json(server + f"api/index/units/{body['key']}")
    assert status == 400 and bad["error"].startswith(f"image {body['key']} is not in the index")


def test_the_atlas_and_its_per_class_references(server, atlas_dir):
    manifest = json.loads((atlas_dir / "manifest.json").read_text())
    conv5 = manifest["layers"]["conv5"]
    c = conv5["projected"][0]
    _, refs = get_json(server + f"api/atlas/conv5/{c}?cls=Ankle%20boot")
    assert refs["top"] == conv5["maps"][c] and refs["class"]["top"] == conv5["per_class"]["Ankle boot"][c]
    assert all(e["label"] == "Ankle boot" for e in refs["class"]["top"])
    status, sprite, kind = get(server + refs["sprite"].lstrip("/"))
    assert status == 200 and kind == "image/png"
    _, ranked = get_json(server + "api/classmaps/conv5?cls=Ankle%20boot")
    tops = [m["top"][0]["value"] for m in ranked["maps"]]
    assert tops == sorted(tops, reverse=True) and get(server + ranked["sheet"].lstrip("/"))[0] == 200


def test_bad_requests_are_one_line_and_the_server_keeps_serving(server):
    for path, words in [
        ("api/project/d7/conv3/9999", "does not exist"),
        ("api/layer/d7/fc6", "not one the explorer shows"),
        ("api/predict/d999999", "does not exist"),
        ("api/predict/u0000", "no image"),
        ("api/project/d7/conv3/1?rule=nope", "rule='nope'"),
        ("api/project/d7/conv3/1?y=1", "both y and x"),
        ("api/project/d7/conv3/1?y=99&x=0", "outside"),
        ("api/dataset?page=x", "whole number"),
        ("api/atlas/conv5/0?cls=Zebra", "no references"),
    ]:
        status, body = get_json(server + path)
        assert status == 400 and words in body["error"] and "\n" not in body["error"], (path, body)
    assert get_json(server + "api/predict/d0")[0] == 200


def raw(url: str, method: str = "GET", headers: dict | None = None, body: bytes = b"") -> tuple[int, bytes]:
    """A request with exactly these headers (Host included), as a hostile page or a DNS-rebinding one sends it."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.putrequest(method, u.path + (f"?{u.query}" if u.query else ""), skip_host=True)
        for k, v in {"Host": u.netloc, **(headers or {})}.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_a_foreign_host_a_foreign_origin_no_token_and_dot_paths_are_refused(server, atlas_dir):
    """Issue 38: the explorer answers its own Host only; a POST from another origin is refused and changes nothing;
    without the token nothing is answered; a dot-path is 404 (the atlas's hidden files)."""
    token = headers(server)["X-Zfnet-Token"]
    ok = {"X-Zfnet-Token": token}
    assert raw(server + "api/info", headers=ok)[0] == 200
    status, body = raw(server + "api/info", headers={**ok, "Host": "evil.example.com"})
    assert status == 421 and b"answers only for" in body
    pixels = np.full((28, 28), 77, np.uint8)
    key = "u" + hashlib.sha256(png_file(pixels)).hexdigest()[:16]
    status, body = raw(server + "api/upload", "POST", {**ok, "Origin": "http://evil.example.com"}, png_file(pixels))
    assert status == 403 and json.loads(body)["error"].startswith("a request from another site")
    assert get_json(server + f"api/predict/{key}")[0] == 400  # the upload was not kept
    assert raw(server + "api/info")[0] == 403  # no token
    assert raw(server + f"api/info?token={token}")[0] == 200
    (atlas_dir / ".secret").write_text("hidden")
    try:
        assert raw(server + "atlas/.secret", headers=ok)[0] == 404
        assert raw(server + "atlas/manifest.json", headers=ok)[0] == 200
    finally:
        (atlas_dir / ".secret").unlink()


def test_a_client_queues_at_most_eight_jobs_and_cancelled_jobs_stop(server):
    """Issue 38: 20 occlusion jobs from one client: the 9th and later are refused with 429 (one line); a prediction
    is answered meanwhile; each cancelled job ends with that reason."""
    answers = [post(server + "api/occlusion/d1?window=2&stride=1") for _ in range(20)]
    assert [s for s, _ in answers[:8]] == [200] * 8
    assert all(s == 429 and "8 jobs of yours" in b["error"] for s, b in answers[8:])
    assert get_json(server + "api/predict/d3")[0] == 200
    jobs = [b["job"] for _, b in answers[:8]]
    for job in jobs:
        req = urllib.request.Request(server + f"api/job/{job}", method="DELETE", headers=headers(server))
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
    for job in jobs:
        while True:
            _, s = get_json(server + f"api/job/{job}")
            if s["error"] or s["result"]:
                break
            time.sleep(0.1)
        assert s["error"] == "the job was cancelled" or s["result"] is not None


def test_paint_answers_what_a_whole_forward_of_the_painted_image_gives(server, reference):
    """Issue 38: POST /api/paint/{key} with a mask PNG, stroke after stroke: p, the top classes and the map's
    activity equal a whole forward of the painted image (1e-4); the answer says how it was computed; a mask of
    another size and a bad setting are one line, 400."""
    p, ds = reference
    x = p.preprocess.eval_input(ds.bases[5:6])
    grey = zfnet.pixels.resolve_fill(p.model, "grey", p.preprocess, x, "test")[0]
    masks = [np.zeros((28, 28), np.uint8) for _ in range(3)]
    masks[0][4:14, 6:20] = 255
    masks[1][:] = masks[0]
    masks[1][15:25, 3:9] = 255
    masks[2][:] = masks[1]
    masks[2][4:10, 6:12] = 0  # erased
    for mask in masks:
        status, r = post(server + "api/paint/d5?target=3&layer=conv4&map=2&strategy=incremental", png_file(mask))
        assert status == 200, r
        painted = torch.where(torch.from_numpy(mask > 127)[None, None], grey, x)
        with torch.no_grad():
            probs = F.softmax(p.model(painted).double(), 1)[0]
            maps = features(p.model, painted, ["conv4"])["conv4"][0, 2]
        assert r["p"] == pytest.approx(float(probs[3]), abs=1e-4) and r["target"] == 3
        assert [t["class"] for t in r["top"]] == probs.topk(5).indices.tolist()
        assert all(t["p"] == pytest.approx(float(probs[t["class"]]), abs=1e-4) for t in r["top"])
        assert r["activity"]["value"] == pytest.approx(float(maps.max()), abs=1e-4 * float(maps.abs().max() + 1))
        assert r["strategy"] == "exact incremental" and r["activity_image"].startswith("data:image/png;base64,")
    assert r["changed"] == [4, 6, 6, 6]  # the last stroke erased one rectangle: only it was replayed
    status, bad = post(server + "api/paint/d5", png_file(np.zeros((20, 28), np.uint8)))
    assert status == 400 and bad["error"].startswith("the mask is 28x20 px, the model's input 28x28")
    status, bad = post(server + "api/paint/d5?blur=-1", png_file(masks[0]))
    assert status == 400 and "blur" in bad["error"] and "\n" not in bad["error"]


def test_uploads_are_capped_and_decoded_with_the_cli_guards(server, reference):
    p, ds = reference
    import numpy as np

    digit = ds.bases[3, 0, 2:30, 2:30].numpy().astype(np.uint8)  # a 28 x 28 image, padded as the data is
    status, up = post(server + "api/upload?name=shoe.png", png_file(digit))
    assert status == 200 and up["key"].startswith("u")
    _, pred = get_json(server + f"api/predict/{up['key']}")
    with torch.no_grad():
        want = int(p.model(p.preprocess(Image.fromarray(digit))).argmax())
    assert pred["top"][0]["class"] == want
    status, err = post(server + "api/upload?name=bad.png", b"\x89PNG\r\n\x1a\n this is not an image")
    assert status == 400 and "cannot read image 'bad.png'" in err["error"]
    status, err = post(server + "api/upload", b"")
    assert status == 400 and "empty" in err["error"]
    status, err = post(server + "api/upload", b"0" * (20 * 1024 * 1024 + 1))
    assert status == 400 and "more than" in err["error"]
    big = png_file(np.zeros((7000, 7000), np.uint8))  # 49 M pixels, a small file: over the pixel cap
    status, err = post(server + "api/upload?name=big.png", big)
    assert status == 400 and "pixels" in err["error"]
    assert get_json(server + f"api/predict/{up['key']}")[0] == 200  # still serving


def test_nothing_outside_the_assets_and_the_atlas_is_reachable(server):
    for path in [
        "atlas/../manifest.json", "atlas/%2e%2e/%2e%2e/etc/passwd", "static/..%2f..%2fpipelines/explore.py",
        "static/../../../etc/passwd", "atlas/maps/../../../../../etc/passwd", "api/../../etc/passwd",
    ]:  # fmt: skip
        status, body, _ = get(server + path)
        assert status == 404 and b"root:" not in body, path
    assert get(server + "static/explore.js")[0] == 200


def test_eight_clients_at_once_get_what_one_client_gets(server):
    paths = [f"api/project/d{i}/conv{1 + i % 5}/{i % 7}?rule={('deconvnet', 'guided')[i % 2]}" for i in range(100, 116)]
    paths += [f"api/predict/d{i}" for i in range(116, 132)] + [f"api/layer/d{i}/conv2" for i in range(132, 140)]
    with ThreadPoolExecutor(8) as pool:  # first, on images whose maps are not kept yet
        together = dict(zip(paths, pool.map(lambda path: get(server + path), paths)))
    alone = {path: get(server + path) for path in paths}
    assert all(status == 200 for status, _, _ in together.values())
    assert together == alone


def test_occlusion_runs_as_a_job_with_progress(server):
    status, job = post(server + "api/occlusion/d0?class=9&window=8&stride=4")
    assert status == 200
    while True:  # polls the job (no deadline: the job ends or the server says why)
        _, s = get_json(server + f"api/occlusion-job/{job['job']}")
        assert s["error"] is None, s["error"]
        if s["result"]:
            break
    _, pred = get_json(server + "api/predict/d0")
    assert s["done"] == s["total"] == 36 and s["result"]["target"] == 9
    assert s["result"]["base_prob"] == pytest.approx(next(t["p"] for t in pred["top"] if t["class"] == 9), rel=1e-5)
    assert s["result"]["figure"].startswith("data:image/png;base64,")
    status, body = post(server + "api/occlusion/d0?window=99")  # refused before a job starts
    assert status == 400 and body["error"] == "occlusion setting window=99: must be at most the 28 px input"


def test_a_bad_setting_is_the_line_the_python_api_raises(server):
    """Issue 34: the explorer parses a request into the method's settings class; a bad value is refused with the
    settings' own line (the one the CLI prints and the Python API raises), never replaced by a default."""
    for path, post_it, make in [
        ("api/occlusion/d0?window=0", True, lambda: zfnet.OcclusionSettings(window=0)),
        ("api/occlusion/d0?stride=-2", True, lambda: zfnet.OcclusionSettings(stride=-2)),
        ("api/occlusion/d0?strategy=fast", True, lambda: zfnet.OcclusionSettings(strategy="fast")),
        ("api/occlusion/d0?tau=nan", True, lambda: zfnet.OcclusionSettings(tau=float("nan"))),
        ("api/project/d7/conv3/1?rule=nope", False, lambda: zfnet.ProjectSettings(rule="nope")),
        ("api/project/d7/conv3/1?mode=guided", False, lambda: zfnet.ProjectSettings.build(None, mode="guided")),
    ]:
        with pytest.raises(zfnet.UsageError) as raised:
            make()
        status, body = post(server + path) if post_it else get_json(server + path)
        assert status == 400 and body["error"] == str(raised.value), (path, body)


def test_only_finished_jobs_are_forgotten():
    jobs = {f"j{i}": {"result": {"x": i} if i % 3 else None, "error": None} for i in range(30)}  # j0, j3, .. run
    forget_finished(jobs, keep=16)
    running = [f"j{i}" for i in range(0, 30, 3)]
    assert len(jobs) == 16 and all(j in jobs for j in running)
    assert list(jobs)[-6:] == [f"j{i}" for i in range(24, 30)]  # the newest finished ones stay
    forget_finished(jobs, keep=4)  # more running than keep: every running job stays, no finished one
    assert list(jobs) == running


def test_serve_on_the_same_server_keeps_to_its_folder(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>atlas</p>")
    (tmp_path / "secret.txt").write_text("not for the web")
    os.symlink(tmp_path / "secret.txt", site / "link.txt")
    (site / ".scan-state.safetensors").write_text("hidden")
    proc, url = start_server("serve", str(site))
    with proc:
        assert get(url)[0] == 200 and b"atlas" in get(url)[1]
        assert raw(url + ".scan-state.safetensors")[0] == 404  # issue 38: no dot-path, the same Host rule
        assert raw(url, headers={"Host": "evil.example.com"})[0] == 421
        for path in ["../secret.txt", "%2e%2e/secret.txt", "link.txt"]:
            status, body, _ = get(url + path)
            assert status == 404 and b"not for the web" not in body, path
        assert stop(proc) == 0


def test_host_other_than_loopback_is_warned(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("x")
    with ServerProcess("serve", str(site), "--host", "0.0.0.0") as proc:
        proc.url()
        assert stop(proc) == 0
        assert "warning: --host 0.0.0.0" in proc.stderr


@needs_chromium
def test_the_page_in_chromium(server, browser, tmp_path, reference, atlas_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    shots = os.environ.get("ZFNET_SCREENSHOTS")
    browser.set_window_size(1500, 1100)
    browser.get(opened(server))
    wait = WebDriverWait(browser, 120)

    def loaded(element_id):
        return browser.execute_script(f"return document.getElementById('{element_id}').naturalWidth") > 0

    def text(element_id):
        return browser.find_element(By.ID, element_id).text

    wait.until(lambda d: loaded("grid") and text("predictions"))
    # pick a dataset image: the third thumbnail (image 2, a trouser)
    browser.find_elements(By.CSS_SELECTOR, "#thumbs button")[2].click()
    wait.until(lambda d: "image=d2" in d.current_url and "Trouser" in text("predictions").split("\n")[0])
    # step through the layers with the keys
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_UP)
    wait.until(lambda d: text("layer-name").startswith("conv4"))
    body.send_keys(Keys.ARROW_UP)
    wait.until(lambda d: text("layer-name").startswith("conv3") and loaded("grid"))
    # click the strongest map of the grid's first row: its projection decodes
    grid = browser.find_element(By.ID, "grid")
    scale = grid.size["width"] / browser.execute_script("return arguments[0].naturalWidth", grid)
    meta = json.loads(get(server + "api/layer/d2/conv3")[1])
    g = meta["grid"]
    from selenium.webdriver import ActionChains

    m = max(range(g["cols"]), key=lambda c: meta["maps"][c][0])  # a map that fires on this image
    cx = (g["pad"] + g["cell"][1] * (m + 0.5)) * scale - grid.size["width"] / 2
    cy = (g["pad"] + g["cell"][0] * 0.5) * scale - grid.size["height"] / 2
    ActionChains(browser).move_to_element_with_offset(grid, int(cx), int(cy)).click().perform()
    wait.until(lambda d: f"map={m}" in d.current_url and loaded("projection") and loaded("patch"))
    assert text("map-name") == f"conv3 #{m}"
    first = browser.find_element(By.ID, "projection").get_attribute("src")
    browser.find_element(By.CSS_SELECTOR, "input[name=rule][value=guided]").click()
    wait.until(
        lambda d: "rule=guided" in d.current_url and d.find_element(By.ID, "projection").get_attribute("src") != first
    )
    # the unit's evidence, on demand: a row per rule and the causal map
    browser.find_element(By.ID, "evidence-run").click()
    wait.until(lambda d: loaded("evidence-causal") and len(d.find_elements(By.CSS_SELECTOR, "#evidence-table tr")) == 4)
    rows = [r.text.split()[0] for r in browser.find_elements(By.CSS_SELECTOR, "#evidence-table tr")[1:]]
    assert rows == ["deconvnet", "guided", "backprop"] and "causal maps: field" in text("evidence-info")
    # issue 37: the map's optimized image, a job with progress
    browser.find_element(By.ID, "vis-run").click()
    wait.until(lambda d: loaded("vis-image") and f"#{m}: its mean" in text("vis-info"))
    # issue 38: paint two strokes over the image: the readout follows each, exact and incremental
    canvas = browser.find_element(By.ID, "paint-canvas")
    ActionChains(browser).move_to_element_with_offset(canvas, -60, -20).click_and_hold().move_by_offset(
        60, 10
    ).move_by_offset(10, 30).release().perform()
    wait.until(lambda d: text("paint-readout").startswith("p(") and loaded("paint-activity"))
    assert "exact incremental" in text("paint-readout") or "whole forwards" in text("paint-readout")
    assert f"conv3 #{m}" in text("paint-readout")
    first_p = text("paint-readout")
    ActionChains(browser).move_to_element_with_offset(canvas, 30, 40).click_and_hold().move_by_offset(
        -40, 0
    ).release().perform()
    wait.until(lambda d: d.execute_script("return paint.history.length") == 2 and text("paint-readout") != first_p)
    # issue 39: the index's images where the clicked unit fires, and the units this image drives most
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#idx-top img")) == 12)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#idx-units li")) == 15
    # a link opens a view: the atlas's top-9 of a map it projected, and a class's references
    c = json.loads((atlas_dir / "manifest.json").read_text())["layers"]["conv5"]["projected"][0]
    browser.get("about:blank")
    browser.get(server + f"#image=d2&layer=conv5&map={c}&rule=guided")
    wait.until(lambda d: loaded("projection") and text("map-name") == f"conv5 #{c}" and loaded("atlas"))
    assert browser.find_element(By.CSS_SELECTOR, "input[name=rule][value=guided]").is_selected()
    browser.find_element(By.ID, "ref-class").send_keys("Trouser")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#class-maps button") and loaded("class-sheet"))
    # typing picks "T-shirt/top" on the way to "Trouser": only the last choice's answers are shown
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#class-refs img")) == 2)
    shown_maps = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#class-maps button")]
    assert len(shown_maps) == 16 == len(set(shown_maps))
    labels = {int(i.get_attribute("alt")[1:]) for i in browser.find_elements(By.CSS_SELECTOR, "#class-refs img")}
    assert {reference[1].classes[int(reference[1].labels[i])] for i in labels} == {"Trouser"}
    if shots:
        os.makedirs(shots, exist_ok=True)
        browser.save_screenshot(os.path.join(shots, "explore.png"))
    body = browser.find_element(By.TAG_NAME, "body")
    # occlusion for the predicted class
    browser.find_element(By.ID, "occ-window").send_keys("8")
    browser.find_element(By.ID, "occ-stride").send_keys("4")
    browser.find_element(By.ID, "occ-run").click()
    wait.until(lambda d: loaded("occ-figure"))
    assert text("occ-info").endswith(" s")
    if shots:
        browser.execute_script("document.getElementById('occ-figure').scrollIntoView()")
        browser.save_screenshot(os.path.join(shots, "explore-occlusion.png"))
    # upload a PNG, then a corrupt file: the error shows, and the page keeps working
    p, ds = reference
    import numpy as np

    good = tmp_path / "sneaker.png"
    good.write_bytes(png_file(ds.bases[6, 0].numpy().astype(np.uint8)))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    browser.find_element(By.ID, "upload").send_keys(str(good))
    wait.until(lambda d: "image=u" in d.current_url and loaded("image") and text("predictions"))
    browser.find_element(By.ID, "upload").send_keys(str(bad))
    wait.until(lambda d: "cannot read image 'broken.png'" in text("error"))
    browser.find_elements(By.CSS_SELECTOR, "#thumbs button")[0].click()
    wait.until(lambda d: "image=d0" in d.current_url and text("error") == "")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "broken.png" not in e["message"]
              and "400" not in e["message"]]  # fmt: skip
    assert not severe, severe


@needs_chromium
def test_the_atlas_viewer_shows_a_class_s_references(browser, atlas_dir):
    """The static viewer (opened from the file system) of an atlas made with --per-class: its "By class" tab shows,
    for a chosen class, the sheet of the maps that fire most within it; a map's button opens that map, when the
    atlas drew it (--max-maps: the others say so)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get((atlas_dir / "index.html").as_uri())
    wait = WebDriverWait(browser, 60)
    tab = browser.find_element(By.ID, "classes-tab")
    wait.until(lambda d: tab.is_displayed())
    tab.click()
    Select(browser.find_element(By.ID, "class-select")).select_by_value("Sandal")
    Select(browser.find_element(By.ID, "class-layer")).select_by_value("conv3")
    sheet = browser.find_element(By.ID, "class-sheet")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", sheet) > 0)
    manifest = json.loads((atlas_dir / "manifest.json").read_text())
    entry = manifest["layers"]["conv3"]["class_sheets"]["Sandal"]
    assert sheet.get_attribute("src").endswith(entry["file"])
    buttons = browser.find_elements(By.CSS_SELECTOR, "#class-maps button")
    assert [b.text for b in buttons] == [f"conv3 #{c}" for c in entry["maps"]]
    projected = manifest["layers"]["conv3"].get("projected")
    openable = [c for c in entry["maps"] if projected is None or c in projected]
    assert [b.is_enabled() for b in buttons] == [c in openable for c in entry["maps"]]
    if openable:  # a map the atlas drew opens on the atlas tab
        buttons[entry["maps"].index(openable[0])].click()
        title = browser.find_element(By.ID, "detail-title")
        wait.until(lambda d: title.text == f"conv3 / map {openable[0]}")


@needs_chromium
def test_hostile_names_are_shown_as_text(browser, tmp_path):
    """A dataset whose class names are HTML: the page shows them as they are written, runs none of them."""
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    hostile = ['<img src=x onerror="document.title=1">', "a&amp;b<i>"]
    for name in hostile:
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 100, np.uint8)).save(tmp_path / "data" / name / "x.png")
    proc, url = start_server("explore", "--pretrained", "--data", f"folder:{tmp_path / 'data'}")
    try:
        browser.get(opened(url))
        wait = WebDriverWait(browser, 120)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thumbs button")) == 2)
        options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#browse-class option")][1:]
        titles = [b.get_attribute("title") for b in browser.find_elements(By.CSS_SELECTOR, "#thumbs button")]
        assert sorted(options) == sorted(hostile) and sorted(t.split(": ", 1)[1] for t in titles) == sorted(hostile)
        assert browser.title == "zfnet explore" and not browser.find_elements(By.CSS_SELECTOR, "#browse-class img, i")
    finally:
        assert stop(proc) == 0
