"""Atlas (Fig. 2): top-k against brute force, stored values against fresh forwards, resume, torchrun shards,
the whole `zfnet atlas` folder, filters (Fig. 5) and evolution (Fig. 4)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli, torchrun_errors

from zfnet import data as zdata
from zfnet import models
from zfnet.errors import UsageError
from zfnet.io import safetensors_metadata
from zfnet.layers import features
from zfnet.methods.atlas import TopK, scan
from zfnet.methods.filters import analyse, radial_frequency
from zfnet.pipelines.atlas import ScanFile
from zfnet.weights import default_preprocess

LAYERS = ["conv1", "conv3", "fc6"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = models.build("zfnet-small", seed=0).eval()
    pp = default_preprocess(model).with_mean(torch.full((1, 32, 32), 40.0))
    ds = zdata.open_dataset("synthetic:70", "test", pp)
    return model, pp, ds


def brute_force_topk(model, pp, ds, layer, k):
    """Every image, every position: each map's per-image maximum, best k images (ties: lower index) among those
    where it fired (maximum > 0: the layers here are rectified, issue 40)."""
    with torch.no_grad():
        acts = features(model, pp.eval_input(ds.bases), [layer])[layer]
    out = []
    for c in range(acts.shape[1]):
        rows = []
        for i in range(acts.shape[0]):
            a = acts[i, c]
            if a.dim() == 2:
                v = float(a.max())
                pos = divmod(int(a.flatten().argmax()), a.shape[-1])
            else:
                v, pos = float(a), (-1, -1)
            rows.append((-v, i, pos))
        rows.sort()
        out.append([(i, -nv, pos) for nv, i, pos in rows if -nv > 0][:k])
    return out


def test_topk_equals_brute_force_and_fresh_forwards(setup):
    model, pp, ds = setup
    result = scan(model, ds, preprocess=pp, layers=LAYERS, k=5, batch_size=16, workers=0, progress=False)
    assert result.images == 70
    for layer in LAYERS:
        tk = result.top[layer]
        want = brute_force_topk(model, pp, ds, layer, 5)
        for c, entries in enumerate(want):
            got = [
                (int(tk.images[r, c]), float(tk.values[r, c]), (int(tk.ys[r, c]), int(tk.xs[r, c])))
                for r in range(5)
                if tk.images[r, c] >= 0
            ]
            assert [g[0] for g in got] == [w[0] for w in entries], (layer, c)
            assert [g[2] for g in got] == [w[2] for w in entries]
            assert len({g[0] for g in got}) == len(got) and int(tk.count()[c]) == len(got)  # distinct images
            for image, value, (y, x) in got:  # each stored value = a fresh forward at that place
                with torch.no_grad():
                    a = features(model, pp.eval_input(ds.bases[image : image + 1]), [layer])[layer][0, c]
                fresh = float(a[y, x]) if y >= 0 else float(a)
                assert value == pytest.approx(fresh, rel=1e-5, abs=1e-6)


def test_per_class_references_equal_brute_force_within_each_class(setup):
    """`per_class=3`: in the same pass, each map's top 3 among the images of each class (distinct images, ties to
    the lower index), against every image of the class at every position; the overall top-k is unchanged."""
    model, pp, ds = setup
    result = scan(model, ds, preprocess=pp, layers=LAYERS, k=5, batch_size=16, workers=0, progress=False, per_class=3)
    plain = scan(model, ds, preprocess=pp, layers=LAYERS, k=5, batch_size=16, workers=0, progress=False)
    labels = ds.labels.tolist()
    for layer in LAYERS:
        assert torch.equal(result.top[layer].images, plain.top[layer].images)
        assert sorted(result.per_class[layer]) == list(range(len(ds.classes)))
        everyone = brute_force_topk(model, pp, ds, layer, len(ds))  # every image, ranked, per map
        for cls, tk in result.per_class[layer].items():
            for c, ranked in enumerate(everyone):
                want = [(i, pos) for i, _, pos in ranked if labels[i] == cls][:3]
                got = [
                    (int(tk.images[r, c]), (int(tk.ys[r, c]), int(tk.xs[r, c])))
                    for r in range(3)
                    if tk.images[r, c] >= 0
                ]
                assert got == want, (layer, cls, c)


def test_batch_size_does_not_change_the_result(setup):
    model, pp, ds = setup
    a = scan(model, ds, preprocess=pp, layers=LAYERS, k=4, batch_size=7, workers=0, progress=False)
    b = scan(model, ds, preprocess=pp, layers=LAYERS, k=4, batch_size=64, workers=0, progress=False)
    for layer in LAYERS:
        assert torch.equal(a.top[layer].images, b.top[layer].images)


def test_merge_breaks_ties_by_image():
    tk = TopK.empty(2, 1).merge(
        torch.tensor([[1.0], [1.0], [0.5]]),
        torch.tensor([[7], [3], [1]]),
        torch.zeros(3, 1, dtype=torch.long),
        torch.zeros(3, 1, dtype=torch.long),
    )
    assert tk.images.flatten().tolist() == [3, 7]


def test_scan_resumes_after_a_crash(setup, tmp_path, monkeypatch):
    model, pp, ds = setup
    state = str(tmp_path / "state.safetensors")
    whole = scan(model, ds, preprocess=pp, layers=LAYERS, k=3, batch_size=10, workers=0, progress=False)
    from zfnet.methods import atlas

    real = atlas.features
    calls = {"n": 0}

    def crashing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed in the middle of the scan
        return real(*a, **kw)

    monkeypatch.setattr(atlas, "features", crashing)
    with pytest.raises(KeyboardInterrupt):
        scan(
            model,
            ds,
            preprocess=pp,
            layers=LAYERS,
            k=3,
            batch_size=10,
            workers=0,
            progress=False,
            store=ScanFile(state, "x"),
            save_every=0,
        )
    monkeypatch.setattr(atlas, "features", real)
    saved = safetensors_metadata(state)
    assert saved["done"] == "30"
    counted = {"n": 0}

    def counting(*a, **kw):
        counted["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(atlas, "features", counting)
    resumed = scan(
        model,
        ds,
        preprocess=pp,
        layers=LAYERS,
        k=3,
        batch_size=10,
        workers=0,
        progress=False,
        store=ScanFile(state, "x"),
    )
    assert counted["n"] == 4  # 40 images left, batches of 10
    for layer in LAYERS:
        for f in ("values", "images", "ys", "xs"):
            assert torch.equal(getattr(resumed.top[layer], f), getattr(whole.top[layer], f))
    # another key starts afresh
    fresh = scan(
        model,
        ds,
        preprocess=pp,
        layers=LAYERS,
        k=3,
        batch_size=10,
        workers=0,
        progress=False,
        store=ScanFile(state, "y"),
    )
    assert fresh.images == 70


def _atlas_cmd(out, *extra):
    return [
        "atlas",
        "--model",
        "zfnet-small",
        "--data",
        "synthetic:48",
        "--split",
        "test",
        "--layers",
        "conv1,conv2,conv5",
        "--k",
        "4",
        "--out",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "16",
        "--no-progress",
        *extra,
    ]


def test_torchrun_sharded_scan_equals_single(tmp_path):
    env = dict(os.environ, ZFNET_PROGRESS="0", OMP_NUM_THREADS="1")
    one = run_cli(*_atlas_cmd(tmp_path / "one", "--per-class", "2"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29518",
            "-m",
            "zfnet",
            *_atlas_cmd(tmp_path / "two", "--per-class", "2"),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, torchrun_errors(two.stderr)
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())
    for layer in ("conv1", "conv2", "conv5"):
        for a, b in zip(m1["layers"][layer]["maps"], m2["layers"][layer]["maps"]):
            assert [(e["image"], e["y"], e["x"]) for e in a] == [(e["image"], e["y"], e["x"]) for e in b]
            assert [e["value"] for e in a] == pytest.approx([e["value"] for e in b], rel=1e-5)
        per1, per2 = m1["layers"][layer]["per_class"], m2["layers"][layer]["per_class"]  # merged like the top-k
        assert list(per1) == list(per2) == m1["dataset"]["classes"]
        for name in per1:
            for a, b in zip(per1[name], per2[name]):
                assert [(e["image"], e["y"], e["x"]) for e in a] == [(e["image"], e["y"], e["x"]) for e in b]


def test_torchrun_error_after_the_group_formed_is_one_line(tmp_path):
    """Every process fails after joining the group (the weights file is opened after it): it says one line and
    leaves the group, exit 2 - no abort in gloo's threads, no --out."""
    env = dict(os.environ, ZFNET_PROGRESS="0", OMP_NUM_THREADS="1")
    out = tmp_path / "two"
    cmd = [*_atlas_cmd(out), "--weights", str(tmp_path / "nope.safetensors")]
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
         "-m", "zfnet", *cmd],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode != 0
    # each process that gets to say it says the same line (the two share one pipe, so their lines may run
    # together; torchrun may stop the second before it speaks)
    said = r.stderr.split("zfnet atlas: error: ")[1:]
    assert said and all(s.startswith("weights file") and "does not exist" in s for s in said), r.stderr
    assert "exitcode  : 2" in r.stderr and "SIGABRT" not in r.stderr and "terminate called" not in r.stderr
    assert not out.exists()  # (torchrun may stop rank 0 before it tidies its work folder: a crash's leftover)


def test_atlas_folder_end_to_end(tmp_path):
    out = tmp_path / "atlas"
    r = run_cli(*_atlas_cmd(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["layer_order"] == ["conv1", "conv2", "conv5"]
    assert m["model"]["name"] == "zfnet-small" and m["dataset"]["images"] == 48 and "torch" in m["provenance"]
    assert (
        m["layers"]["conv2"]["channels"] == models.build("zfnet-small").conv2.out_channels
        and len(m["layers"]["conv2"]["maps"][0]) == 4
    )
    assert {"image", "id", "label", "value", "y", "x"} <= set(m["layers"]["conv5"]["maps"][3][0])
    for layer in m["layer_order"]:
        sprites = [f for f in os.listdir(out / "maps" / layer) if f != "filters.png"]
        fired = sum(1 for entries in m["layers"][layer]["maps"] if entries)  # a map that never fired has none
        assert len(sprites) == fired and fired > 0
        assert (out / "figures" / f"{layer}.png").is_file()
    from PIL import Image

    sprite = Image.open(out / "maps" / "conv2" / "0000.png")
    th, tw = m["layers"]["conv2"]["tile"]
    assert sprite.size == (4 * tw, 2 * th)  # k projections over k patches
    # layer 1 shows its filters too (Fig. 2): one tile per channel, each the filter min-max stretched
    f1 = m["layers"]["conv1"]["filter"]
    strip = Image.open(out / f1["sprite"])
    assert strip.size == (m["layers"]["conv1"]["channels"] * f1["tile"][1], f1["tile"][0])
    with torch.random.fork_rng():  # the seeded random initialization the atlas used
        torch.manual_seed(0)
        w = models.build("zfnet-small").conv1.weight.detach()
    scale = f1["tile"][1] // w.shape[-1]
    first = np.asarray(strip.convert("L"))[::scale, : w.shape[-1] * scale : scale].astype(float)
    want = (w[0, 0] - w[0, 0].min()) * 255 / (w[0, 0].max() - w[0, 0].min())
    assert np.abs(first - want.numpy()).max() <= 1.0
    assert "filter" not in m["layers"]["conv2"]
    for f in ("filters.png", "filters.json", "index.html", "viewer.js", "atlas-data.js"):
        assert (out / f).is_file(), f
    # rerunning continues (nothing to redo) and gives the same manifest
    again = run_cli(*_atlas_cmd(out))
    assert again.returncode == 0
    assert json.loads((out / "manifest.json").read_text())["layers"] == m["layers"]
    # different settings into the same folder: refused, earlier results intact
    other = run_cli(*_atlas_cmd(out, "--mode", "guided", "--k", "3"))
    assert other.returncode == 2 and "already holds an atlas" in other.stderr and "Traceback" not in other.stderr
    assert json.loads((out / "manifest.json").read_text())["layers"] == m["layers"]
    bad = run_cli(*_atlas_cmd(tmp_path / "bad", "--layers", "conv9"))
    assert bad.returncode == 2 and "no layer 'conv9'" in bad.stderr


def test_filter_diagnostics_by_construction():
    w = torch.randn(6, 1, 5, 5) * 0.05
    w[2] *= 10  # dominates
    rep = analyse(w, max_response=torch.tensor([3.0, 2.0, 5.0, 0.0, 2.5, 0.01]))
    assert rep.dominant.tolist() == [False, False, True, False, False, False]
    assert rep.dead.tolist() == [False, False, False, True, False, True]
    s = rep.summary()
    assert s["dominant"] == 1 and s["dead"] == 2 and s["never_fired"] == 1
    flat = torch.ones(1, 1, 4, 4)
    stripes = torch.tensor([[1.0, -1.0] * 2] * 4).view(1, 1, 4, 4)  # alternates every pixel along x
    f = radial_frequency(torch.cat([flat + 1e-3 * stripes, stripes]))
    assert float(f[1]) == pytest.approx(0.5, abs=1e-6) and float(f[0]) == pytest.approx(0.5, abs=1e-6)
    # slow reference: the DFT written out as sums, power-weighted mean of |frequency|
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 3, 3, 5, generator=g, dtype=torch.float64)
    for o in range(2):
        num = den = 0.0
        for u in range(3):
            for v in range(5):
                p = 0.0
                for c in range(3):
                    x = w[o, c] - w[o, c].mean()
                    re = sum(
                        float(x[a, b]) * math.cos(2 * math.pi * (u * a / 3 + v * b / 5))
                        for a in range(3)
                        for b in range(5)
                    )
                    im = sum(
                        float(x[a, b]) * math.sin(2 * math.pi * (u * a / 3 + v * b / 5))
                        for a in range(3)
                        for b in range(5)
                    )
                    p += re * re + im * im
                fu, fv = (u if u <= 1 else u - 3) / 3, (v if v <= 2 else v - 5) / 5
                num, den = num + p * math.hypot(fu, fv), den + p
        assert float(radial_frequency(w)[o]) == pytest.approx(num / den, rel=1e-5)


def test_evolution_from_a_training_run(tmp_path):
    from zfnet.checkpoints import find_snapshots, load_snapshot
    from zfnet.methods.evolution import choose_channels, evolution
    from zfnet.recipe import Recipe, RunOptions
    from zfnet.train import fit

    run = tmp_path / "run"
    fit(
        Recipe(
            model="zfnet-small",
            data="synthetic",
            val_split="val",
            epochs=3,
            batch_size=32,
            limit_train=96,
            limit_val=32,
            snapshots=(1, 3),
        ),
        RunOptions(out=str(run), workers=0),
        progress=False,
    )
    snaps = find_snapshots(str(run))
    assert [e for e, _ in snaps] == [1, 3]
    model = models.build("zfnet-small")  # a 10-way head; the run had 8 classes: conv visualizations never read it
    pp = default_preprocess(model)
    train = zdata.open_dataset("synthetic", "train", pp).head(40)
    chans = choose_channels(model, ["conv1", "conv4"], 3, 0, (1, 28, 28))
    evo = evolution(
        model,
        train,
        snapshots=snaps,
        layers=["conv1", "conv4"],
        channels=chans,
        batch_size=16,
        workers=0,
        progress=False,
    )
    assert evo.epochs == [1, 3]
    for layer, cs in chans.items():
        for c in cs:
            cells = evo.cells[layer][c]
            assert len(cells) == 2
            # the value shown for the last epoch is that snapshot's strongest activation over the set
            load_snapshot(model, snaps[-1][1])
            with torch.no_grad():
                from zfnet.io import load_tensors

                mean = load_tensors(snaps[-1][1])["preprocess/mean_image"]
                p2 = default_preprocess(model).with_mean(mean)
                acts = features(model.eval(), p2.eval_input(train.bases), [layer])[layer][:, c]
            assert cells[-1][2] == pytest.approx(float(acts.max()), rel=1e-5)
    r = run_cli(
        "evolution",
        "--model",
        "zfnet-small",
        "--run",
        str(run),
        "--data",
        "synthetic",
        "--limit",
        "32",
        "--maps",
        "2",
        "--layers",
        "conv2",
        "--out",
        str(tmp_path / "evo"),
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "evo" / "evolution" / "conv2.png").is_file()
    with pytest.raises(UsageError, match="no snapshots"):
        find_snapshots(str(tmp_path))
