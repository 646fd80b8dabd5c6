"""Issue 39: the activation index. Its top-9 of every unit equals the atlas's streaming top-9 (images, values,
positions) on the embedded model's test images; per-class top-k and an image's units equal a brute force in
numpy; a killed build resumed equals an uninterrupted one; a second --data appends; `zfnet query` (SQL and named
queries) and `zfnet.open_index`; `zfnet diff` of a model against a copy of itself with one layer's channels
permuted recovers the permutation with correlation 1; a torchvision ResNet-18 and a user module are indexed."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, noise_photos
from test_evidence import USER

import zfnet
from zfnet import data as zdata
from zfnet.cli import main
from zfnet.methods.matching import correlations, match_units
from zfnet.pipelines.index import IndexSettings, build_index, open_index
from zfnet.pretrained import open_embedded
from zfnet.settings import Run

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

N = 600  # embedded test images indexed


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded model's index of its first N test images (float32, 3 shards), and the model and data."""
    p = open_embedded()
    ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess)
    out = str(tmp_path_factory.mktemp("idx") / "idx")
    s = IndexSettings(dtype="float32", shard_images=250, limit=N)
    build_index(p, ds, out, s, Run(batch_size=100))
    return p, ds, out


def brute(p, ds, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image's maxima and argmax positions of `layer`, by a plain loop over the images."""
    vals, poss = [], []
    with torch.no_grad():
        for i in range(N):
            m = zfnet.layers.features(p.model, p.preprocess.eval_input(ds.bases[i : i + 1]), [layer])[layer][0]
            flat = m.flatten(1)
            vals.append(flat.max(1).values.numpy())
            poss.append(flat.argmax(1).numpy())
    return np.stack(vals), np.stack(poss)


def test_the_top_9_equals_the_atlas_streaming_top_9(embedded):
    p, ds, out = embedded
    idx = open_index(out)
    x = p.preprocess.eval_input(ds.bases[:N])
    scan = zfnet.atlas(p.model, x, layers=idx.layers, k=9, batch_size=100)
    layers = idx.layers
    for layer in layers:
        tk = scan.top[layer].fired()
        w = idx.shapes[layer][2]
        for unit in range(layers.index(layer), idx.shapes[layer][0], 4):  # a quarter of the units, each layer's own
            t = idx.top(layer, unit, 9)
            want = [(int(i), float(v), int(y), int(xx)) for i, v, y, xx in
                    zip(tk.images[:, unit], tk.values[:, unit], tk.ys[:, unit], tk.xs[:, unit]) if i >= 0]  # fmt: skip
            got = list(zip(t.column("image").to_pylist(), t.column("value").to_pylist(), t.column("y").to_pylist(),
                           t.column("x").to_pylist()))  # fmt: skip
            assert [g[0] for g in got] == [wt[0] for wt in want], (layer, unit)
            assert [(g[2], g[3]) for g in got] == [(wt[2], wt[3]) for wt in want], (layer, unit)
            assert np.allclose([g[1] for g in got], [wt[1] for wt in want], rtol=0, atol=0), (layer, unit)
            assert all(0 <= g[3] < w for g in got)


def test_an_atlas_from_the_index_equals_one_from_a_pass_over_the_data(embedded, tmp_path):
    """`zfnet atlas --index IDX`: the same manifest (every map's top-k and per-class references) and panels as the
    atlas that scans the images, without the scan."""
    _, _, out = embedded
    common = ["atlas", "--pretrained", "--data", "fashion-mnist-mini", "--limit", str(N), "--layers", "conv2,conv5",
              "--max-maps", "2", "--per-class", "2", "--workers", "0"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "scan")]) == 0
    assert main([*common, "--index", out, "--out", str(tmp_path / "idx")]) == 0
    a = json.loads((tmp_path / "scan" / "manifest.json").read_text())
    b = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert b["from_index"]["dtype"] == "float32" and b["from_index"]["note"] == "" and a["from_index"] is None
    assert a["layers"] == b["layers"] and a["panel_maps"] == b["panel_maps"]
    for layer in ("conv2", "conv5"):
        panel = a["figures"][layer]
        assert (tmp_path / "scan" / panel).read_bytes() == (tmp_path / "idx" / b["figures"][layer]).read_bytes()
    assert main([*common, "--split", "train", "--index", out, "--out", str(tmp_path / "bad")]) == 2


def test_float16_refuses_maxima_it_cannot_hold(tmp_path):
    """A maximum beyond float16's largest value would be stored as infinity: the float16 build stops in one line
    naming float32; float32 takes the same model."""
    p = open_embedded()
    with torch.no_grad():
        p.model.conv1.weight.mul_(1e6)
    ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess)
    with pytest.raises(zfnet.UsageError) as e:
        build_index(p, ds, str(tmp_path / "f16"), IndexSettings(dtype="float16", limit=8), Run(batch_size=8))
    assert "beyond float16's 65504" in str(e.value) and "--dtype float32" in str(e.value) and "\n" not in str(e.value)
    build_index(p, ds, str(tmp_path / "f32"), IndexSettings(dtype="float32", limit=8), Run(batch_size=8))
    assert float(open_index(str(tmp_path / "f32")).values("conv1")[1].max()) > 65504


def test_per_class_top_k_and_an_images_units_equal_a_brute_force(embedded):
    p, ds, out = embedded
    idx = open_index(out)
    vals, poss = brute(p, ds, "conv4")
    labels = ds.labels[:N].numpy()
    for unit in (0, 7, 31):
        for label in (2, 9):
            rows = np.nonzero(labels == label)[0]
            v = vals[rows, unit]
            order = sorted(range(len(rows)), key=lambda r: (-v[r], rows[r]))[:5]
            want = [int(rows[r]) for r in order if v[r] > 0]
            t = idx.top("conv4", unit, 5, label=label)
            assert t.column("image").to_pylist() == want
            assert np.allclose(t.column("value").to_pylist(), [vals[i, unit] for i in want], atol=1e-5)
    u = idx.units_of(17, k=4, layer="conv4")
    order = sorted(range(vals.shape[1]), key=lambda c: (-vals[17, c], c))[:4]
    assert u.column("unit").to_pylist() == order
    w = idx.shapes["conv4"][2]
    assert u.column("y").to_pylist() == [int(poss[17, c]) // w for c in order]
    # the SQL views: the same numbers
    s = idx.sql("SELECT count(*) AS n, max(value) AS top FROM units WHERE layer = 'conv4' AND unit = 7")
    assert s.column("n").to_pylist() == [N] and np.isclose(s.column("top")[0].as_py(), vals[:, 7].max(), atol=1e-5)
    with pytest.raises(zfnet.UsageError, match="^the query failed: .*the views are images"):
        idx.sql("SELECT nope FROM units")


def test_a_killed_build_resumes_to_the_same_index_and_a_second_data_appends(tmp_path):
    """SIGKILLed after its first shards (80 of 10 images), rerun: the index equals an uninterrupted one row for
    row; then a second --data appends its shards, numbered after the first data's images."""
    from test_interrupted import ENV, kill_when, partial

    args = ["index", "--pretrained", "--data", "fashion-mnist-mini", "--limit", "800", "--dtype", "float32",
            "--shard-images", "10", "--batch-size", "10"]  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    def run(argv):
        r = subprocess.run([sys.executable, "-m", "zfnet", *argv], env=ENV, cwd=REPO, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]

    run([*args, "--out", str(straight)])

    def some_shards():
        m = partial(killed) / "manifest.json"
        return m.is_file() and len(json.loads(m.read_text())["sources"][0]["shards"]) >= 2

    kill_when([*args, "--out", str(killed)], some_shards, partial(killed))
    done = len(json.loads((partial(killed) / "manifest.json").read_text())["sources"][0]["shards"])
    assert not killed.exists() and done < 80
    run([*args, "--out", str(killed)])
    a, b = open_index(str(straight)), open_index(str(killed))
    q = "SELECT * FROM shards ORDER BY image"
    assert a.sql(q).equals(b.sql(q)) and a.sql(q).num_rows == 800
    run(["index", "--pretrained", "--data", "synthetic:20,3", "--dtype", "float32", "--shard-images", "20",
         "--out", str(killed)])  # fmt: skip
    c = open_index(str(killed))
    assert [s["spec"] for s in c.manifest["sources"]] == ["fashion-mnist-mini", "synthetic:20,3"]
    n = c.sql("SELECT count(*) AS n, max(image) AS last FROM images").to_pylist()[0]
    assert n["n"] == 800 + n["last"] - 799 and n["last"] > 800


def test_query_command_and_one_line_errors(embedded, capsys):
    _, _, out = embedded
    assert main(["query", out, "--top", "conv5:3", "--k", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and rows == open_index(out).top("conv5", 3, 4).to_pylist()
    assert main(["query", out, "SELECT layer, count(*) AS n FROM units GROUP BY layer ORDER BY layer", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "layer,n" and lines[1] == f"conv1,{N * open_index(out).shapes['conv1'][0]}"
    assert main(["query", out, "--units-of", "5", "--k", "2"]) == 0
    assert "(10 rows)" in capsys.readouterr().out
    # the same data again with another --limit: refused, the index untouched
    again = ["index", "--pretrained", "--data", "fashion-mnist-mini", "--limit", "100", "--dtype", "float32"]
    assert main([*again, "--shard-images", "250", "--out", out]) == 2
    assert "holds fashion-mnist-mini split 'test' already (600 images" in capsys.readouterr().err
    assert open_index(out).sql("SELECT count(*) AS n FROM images")["n"][0].as_py() == N
    for bad, words in (
        (["--top", "conv9:1"], "layer 'conv9' is not in this index"),
        (["--top", "conv5:999"], "unit 999 does not exist in conv5"),
        (["--top", "conv5"], "--top takes LAYER:UNIT"),
        (["--top", "conv5:1", "--class", "Zebra"], "--class 'Zebra' is not a class"),
        ([], "give one of"),
    ):
        assert main(["query", out, *bad]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_diff_recovers_a_permutation_of_a_layers_channels(embedded, tmp_path, capsys):
    """A copy of the embedded model with conv3's output channels permuted (and conv4's input channels with them):
    the same function, its conv3 units renumbered; the diff pairs unit c with perm^-1(c), correlation 1, every
    other layer the identity."""
    p, ds, out = embedded
    twin = open_embedded()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(twin.model.conv3.out_channels, generator=g)
    with torch.no_grad():
        twin.model.conv3.weight.copy_(twin.model.conv3.weight[perm])
        twin.model.conv3.bias.copy_(twin.model.conv3.bias[perm])
        twin.model.conv4.weight.copy_(twin.model.conv4.weight[:, perm])
    b = str(tmp_path / "twin")
    build_index(twin, ds, b, IndexSettings(dtype="float32", shard_images=250, limit=N), Run(batch_size=100))
    assert main(["diff", out, b, "--layers", "conv3,conv4", "--names", "model,permuted", "--out",
                 str(tmp_path / "diff")]) == 0  # fmt: skip
    d = json.loads((tmp_path / "diff" / "diff.json").read_text())
    c3 = d["layers"]["conv3"]
    got = {q["a"]: q["b"] for q in c3["pairs"]}
    assert got == {int(perm[j]): j for j in range(len(perm)) if int(perm[j]) in got}
    assert len(got) + len(c3["gone"]) == len(perm) and all(q["r"] > 1 - 1e-6 for q in c3["pairs"])
    assert all(q["a"] == q["b"] for q in d["layers"]["conv4"]["pairs"])
    page = (tmp_path / "diff" / "index.html").read_text()
    assert "model vs permuted" in page and (tmp_path / "diff" / "matches.png").is_file()
    assert d["settings"] == {"layers": ["conv3", "conv4"], "threshold": 0.5, "k": 9, "names": ["model", "permuted"],
                             "pictures": True}  # fmt: skip
    # `DiffSettings`: a bad setting is one line, refused before any index is read
    for bad, words in ((["--threshold", "2"], "threshold"), (["--names", "one"], "must be two names")):
        assert main(["diff", out, b, *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_matching_by_hand_and_different_widths():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 3))
    b = np.stack([a[:, 2], -a[:, 0], rng.normal(size=50), a[:, 1] * 3 + 1], 1)  # 4 units
    c = correlations(a, b)
    assert np.allclose(c, np.corrcoef(a.T, b.T)[:3, 3:], atol=1e-12)
    m = match_units(a, b, threshold=0.5)
    assert list(zip(m.a, m.b)) in ([(1, 3), (2, 0)], [(2, 0), (1, 3)]) and m.gone == [0] and sorted(m.new) == [1, 2]
    assert np.allclose(m.r, [1.0, 1.0])
    assert correlations(np.ones((5, 1)), rng.normal(size=(5, 2))).tolist() == [[0.0, 0.0]]  # a constant unit


def test_resnet18_and_a_users_module_are_indexed(tmp_path, user_code):
    from torchvision.models import resnet18

    photos = tmp_path / "photos"
    noise_photos(photos, 12)
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    assert main(["index", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "r18.pth"), "--input-size",
                 "64", "--data", str(photos), "--out", str(tmp_path / "r18")]) == 0  # fmt: skip
    idx = open_index(str(tmp_path / "r18"))
    assert idx.layers[-1].startswith("layer4") and idx.sql("SELECT count(*) AS n FROM images")["n"][0].as_py() == 12
    r18 = ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "r18.pth"), "--input-size", "64"]
    last = idx.layers[-1]
    assert main(["atlas", *r18, "--data", str(photos), "--layers", last, "--max-maps", "1", "--workers", "0",
                 "--index", str(tmp_path / "r18"), "--out", str(tmp_path / "r18-atlas")]) == 0  # fmt: skip
    atlas = json.loads((tmp_path / "r18-atlas" / "manifest.json").read_text())
    first = atlas["layers"][last]["maps"][0]
    top = idx.top(last, 0, 9).to_pylist()
    assert [m["image"] for m in first] == [t["index"] for t in top] and atlas["from_index"]["dtype"] == "float16"
    # a float16 index's atlas says what its ranks rest on: in the manifest, the viewer's notes and the panel's title
    assert atlas["from_index"]["note"].startswith("top-k read from a float16 index")
    assert atlas["from_index"]["note"] in (tmp_path / "r18-atlas" / "atlas-data.js").read_text()
    # a model against itself: every unit its own partner
    assert main(["diff", str(tmp_path / "r18"), str(tmp_path / "r18"), "--layers", last, "--out",
                 str(tmp_path / "r18-diff")]) == 0  # fmt: skip
    d = json.loads((tmp_path / "r18-diff" / "diff.json").read_text())["layers"][last]
    assert all(p["a"] == p["b"] for p in d["pairs"]) and d["matched"] + len(d["gone"]) == 512
    name = user_code("idxuser", USER)
    assert main(["index", "--model", f"{name}:Res", "--input-size", "32", "--normalize", "none", "--data",
                 str(photos), "--layers", "b,fc", "--out", str(tmp_path / "user")]) == 0  # fmt: skip
    u = open_index(str(tmp_path / "user"))
    fc = u.sql("SELECT count(*) AS n, count(y) AS with_position FROM units WHERE layer = 'fc'").to_pylist()[0]
    assert fc == {"n": 12 * 3, "with_position": 0}  # a fully connected layer: values, no positions
    assert main(["query", str(tmp_path / "user"), "--top", "fc:1", "--k", "3"]) == 0
    mine = ["--model", f"{name}:Res", "--input-size", "32", "--normalize", "none"]
    assert main(["atlas", *mine, "--data", str(photos), "--layers", "b", "--max-maps", "1", "--workers", "0",
                 "--index", str(tmp_path / "user"), "--out", str(tmp_path / "user-atlas")]) == 0  # fmt: skip
    got = json.loads((tmp_path / "user-atlas" / "manifest.json").read_text())["layers"]["b"]["maps"][1]
    assert [m["image"] for m in got] == [t["index"] for t in u.top("b", 1, 9).to_pylist()]
    assert main(["diff", str(tmp_path / "user"), str(tmp_path / "user"), "--layers", "b", "--out",
                 str(tmp_path / "user-diff")]) == 0  # fmt: skip
    torch.manual_seed(0)
    user = importlib.import_module(name).Res().eval()
    assert u.shapes["b"][0] == user.b.out_channels


def test_a_two_process_torchrun_index_equals_the_one_process_index(embedded, tmp_path):
    """`torchrun --nproc_per_node 2 -m zfnet index`: process r writes shards r, r + 2, ...; the index equals the
    one-process index (the module fixture's, same shards) row for row."""
    from conftest import torchrun_errors

    _, _, one = embedded
    env = dict(os.environ, ZFNET_PROGRESS="0", OMP_NUM_THREADS="1")
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", "-m",
         "zfnet", "index", "--pretrained", "--data", "fashion-mnist-mini", "--limit", str(N), "--dtype", "float32",
         "--shard-images", "250", "--batch-size", "100", "--out", str(tmp_path / "two")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, torchrun_errors(two.stderr)
    a, b = open_index(one), open_index(str(tmp_path / "two"))
    q = "SELECT * FROM shards ORDER BY image"
    assert a.sql(q).equals(b.sql(q))
    assert [sh["file"] for sh in b.manifest["sources"][0]["shards"]] == [
        f"shards/000-{j:05d}.parquet" for j in range(3)
    ]


def test_diff_of_two_weights_files_indexes_them_on_the_fly(tmp_path):
    """`zfnet diff FILE_A FILE_B --pretrained`: the embedded run's first and last snapshots, each loaded into the
    embedded model (with its own mean) and indexed over the same images, then matched: the same assignment as two
    indexes built apart give; the page names the files."""
    from zfnet.checkpoints import load_snapshot
    from zfnet.pipelines.diff import run_diff
    from zfnet.pretrained import snapshots

    snaps = snapshots()
    first, last = snaps[0][1], snaps[-1][1]
    assert main(["diff", first, last, "--pretrained", "--limit", "300", "--layers", "conv1,conv5", "--out",
                 str(tmp_path / "fly")]) == 0  # fmt: skip
    fly = json.loads((tmp_path / "fly" / "diff.json").read_text())
    built = []
    for k, path in enumerate((first, last)):
        p = open_embedded()
        stored = load_snapshot(p.model, path).preprocess(p.model)
        if stored is not None and stored.mean_image is not None:
            p.preprocess = p.preprocess.with_mean(stored.mean_image)
        ds = zdata.open_dataset("fashion-mnist-mini", "test", p.preprocess)
        built.append(str(tmp_path / f"idx{k}"))
        s = IndexSettings(layers=("conv1", "conv5"), dtype="float32", limit=300)
        build_index(p, ds, built[-1], s, Run())
    apart = run_diff(built[0], built[1], str(tmp_path / "apart"), pictures=False)
    for layer in ("conv1", "conv5"):
        assert fly["layers"][layer]["pairs"] == apart["layers"][layer]["pairs"]
    assert [fly["a"]["name"], fly["b"]["name"]] == ["epoch-001", "model"]


def test_an_index_written_to_a_file_system_uri_is_the_same_index(embedded, tmp_path, capsys):
    """--out as a pyarrow file-system URI (here file://, the same code as s3:// or gs://): written there shard by
    shard, not staged; read back through pyarrow's file system; row for row the local index."""
    _, _, local = embedded
    uri = (tmp_path / "remote").as_uri()
    args = ["index", "--pretrained", "--data", "fashion-mnist-mini", "--limit", str(N), "--dtype", "float32",
            "--shard-images", "250", "--batch-size", "100", "--out", uri]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "remote" / "shards" / "000-00002.parquet").is_file()
    assert not list(tmp_path.glob("*partial*")) and not list((tmp_path / "remote").rglob("*.partial"))
    a, b = open_index(local), open_index(uri)
    q = "SELECT * FROM shards ORDER BY image"
    assert a.sql(q).to_pylist() == b.sql(q).to_pylist() and a.top("conv5", 2, 9).equals(b.top("conv5", 2, 9))
    units = "SELECT * FROM units WHERE image = 5 ORDER BY layer, unit"
    assert a.sql(units).equals(b.sql(units))
    assert main(args) == 0  # a rerun finds every shard there
    capsys.readouterr()
    assert main(["query", uri, "--top", "conv5:2", "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == a.top("conv5", 2, 3).to_pylist()
    assert main(["index", "--pretrained", "--data", "fashion-mnist-mini", "--out", "nope://x/y"]) == 2
    assert "cannot open 'nope://x/y' as a file system" in capsys.readouterr().err
