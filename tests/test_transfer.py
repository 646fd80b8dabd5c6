"""Sec. 5.2-5.3 as commands: the fold protocol, features extracted once equal per-image forwards, the softmax
and SVM probes against scikit-learn run by hand, PASCAL's AP with 'difficult only' left out, the commands end to
end on tiny data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import torchrun_errors
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from zfnet import data as zdata
from zfnet import models
from zfnet.cli import main
from zfnet.errors import UsageError
from zfnet.experiments import transfer as tx
from zfnet.layers import features
from zfnet.weights import default_preprocess


def test_folds_protocol():
    labels = np.repeat(np.arange(4), 20)
    tr, te = tx.folds_split(labels, 5, 10, fold=0)
    assert len(tr) == 20 and len(te) == 40 and not set(tr) & set(te)
    assert all((labels[tr] == c).sum() == 5 and (labels[te] == c).sum() == 10 for c in range(4))
    assert np.array_equal(tx.folds_split(labels, 5, 10, 0)[0], tr)  # the fold is the seed
    assert not np.array_equal(tx.folds_split(labels, 5, 10, 1)[0], tr)
    assert tx.mean_class_accuracy(np.array([0, 0, 1, 0]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    with pytest.raises(UsageError, match="lower --per-class"):
        tx.folds_split(labels, 20, 10, 0)


def test_features_once_equal_per_image_forwards_and_probe_equals_sklearn():
    model = models.build("zfnet-small", seed=0).eval()
    pp = default_preprocess(model).with_mean(torch.full((1, 32, 32), 30.0))
    ds = zdata.open_dataset("synthetic:60,3", "test", pp)
    feats, pos = tx.extract(model, ds, layers=["conv3", "fc7"], batch_size=7, progress=False)
    with torch.no_grad():
        one = features(model, pp.eval_input(ds.bases[5:6]), ["conv3", "fc7"])
    torch.testing.assert_close(feats["conv3"][5], one["conv3"].flatten(), rtol=1e-5, atol=1e-5)
    labels = ds.labels[pos].numpy()
    got = tx.probe(feats, labels, [4], 6, 2, ["softmax"], ["fc7"]).scores["softmax/fc7/4"]
    want = []
    for f in range(2):
        tr, te = tx.folds_split(labels, 4, 6, f)
        x = feats["fc7"].numpy()
        sc = StandardScaler().fit(x[tr])
        clf = LogisticRegression(C=1.0, max_iter=2000, random_state=f).fit(sc.transform(x[tr]), labels[tr])
        pred = clf.predict(sc.transform(x[te]))
        want.append(np.mean([np.mean(pred[labels[te] == c] == c) for c in np.unique(labels[te])]))
    assert got == pytest.approx(want)


def test_feature_store_equals_in_memory_features_and_resumes(tmp_path):
    """The on-disk store holds exactly `extract`'s rows; a run stopped after some chunks keeps them and the next
    run recomputes only the missing ones (their rows were wiped here, and come back equal)."""
    model = models.build("zfnet-small", seed=0).eval()
    pp = default_preprocess(model).with_mean(torch.full((1, 32, 32), 30.0))
    ds = zdata.open_dataset("synthetic:50,3", "test", pp)
    layers = ["conv2", "fc7"]
    feats, pos = tx.extract(model, ds, layers=layers, batch_size=7, progress=False)
    store = tx.extract_to_store(model, ds, str(tmp_path / "s"), layers=layers, key="k", batch_size=8, progress=False)
    assert np.array_equal(store.positions(), pos.numpy())
    for l in layers:
        torch.testing.assert_close(torch.from_numpy(np.array(store.array(l))), feats[l], rtol=1e-5, atol=1e-5)
    chunks, rows = store.flags("chunks", "r+"), store.array("conv2", "r+")
    chunks[[1, 4]] = 0  # as if the run had stopped before these two chunks
    rows[8:16] = -1
    rows[32:40] = -1
    chunks.flush()
    rows.flush()
    del chunks, rows
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        again = tx.extract_to_store(
            model, ds, str(tmp_path / "s"), layers=layers, key="k", batch_size=8, progress=False
        )
    finally:
        handle.remove()
    assert calls == [1, 8, 8]  # one image to size the layers, then the two missing chunks only
    torch.testing.assert_close(torch.from_numpy(np.array(again.array("conv2"))), feats["conv2"], rtol=1e-5, atol=1e-5)
    other = tx.extract_to_store(model, ds, str(tmp_path / "s"), layers=["fc7"], key="k2", progress=False)
    assert other.layers == ["fc7"]  # another key starts over


def test_torchrun_sharded_feature_store_equals_single(tmp_path):
    """Two torchrun processes extract alternate chunks into one store; rank 0 classifies: the same features,
    bit for bit (same batches, one thread each), and the same table."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ZFNET_PROGRESS="0", OMP_NUM_THREADS="1")
    args = ["layerprobe", "--model", "zfnet-small", "--data", "synthetic:150,3", "--split", "test", "--per-class",
            "4", "--folds", "1", "--test-per-class", "6", "--layers", "conv2,fc7", "--no-progress"]  # fmt: skip
    one = subprocess.run(
        [sys.executable, "-m", "zfnet", *args, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zfnet",
         *args, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, torchrun_errors(two.stderr)
    a, b = tx.FeatureStore(str(tmp_path / "one" / ".features")), tx.FeatureStore(str(tmp_path / "two" / ".features"))
    for layer in ("conv2", "fc7"):
        assert np.array_equal(np.asarray(a.array(layer)), np.asarray(b.array(layer)))
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())["summary"]
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())["summary"]
    assert r1 == r2


MEMORY_RUN = """
import resource, sys
import torch
from zfnet import data as zdata, models
from zfnet.cli import main
from zfnet.experiments import transfer as tx
from zfnet.weights import default_preprocess

def vm_data():
    for line in open("/proc/self/status"):
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024

cap, n, out = int(sys.argv[1]) * 2**20, int(sys.argv[2]), sys.argv[3]
model = models.build("zfnet-small").eval()
with torch.no_grad():
    model(torch.zeros(64, 1, 28, 28))  # threads and allocator pools exist before the cap
import numpy as np, scipy.linalg.blas
a = np.ones((64, 64))
# numpy's and scipy's OpenBLAS take their work buffers before the cap too: OpenBLAS retries a buffer it cannot
# map forever (a hang, not an error), so a first BLAS call of the probes at the cap would never return
a @ a, scipy.linalg.blas.dgemm(1.0, a, a)
# the images the in-memory attempt reads, opened before the cap too (its features are what must not fit)
ds = zdata.open_dataset(f"synthetic:{n},4", "test", default_preprocess(model).with_mean(torch.zeros(1, 32, 32)))
limit = vm_data() + cap
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
code = main(["layerprobe", "--model", "zfnet-small", "--data", f"synthetic:{n},4", "--split", "test",
             "--per-class", "4", "--folds", "1", "--test-per-class", "6", "--out", out, "--no-progress"])
print("layerprobe", code)
try:  # holding every layer's features in memory, as Table 6 did before the store
    tx.extract(model, ds, layers=["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"], progress=False)
    print("in-memory fits")
except (MemoryError, RuntimeError):
    print("in-memory refused")
"""


def test_table6_runs_within_a_memory_cap_four_times_below_its_features(tmp_path):
    """Layers 1-7 of zfnet-small are 305 KB per image; 3,520 images are 1.07 GB (1,024 MiB) of features, 4x the 256 MiB
    cap on the process's data (RLIMIT_DATA: heap and anonymous memory; the store's file-backed maps are not
    data). Table 6 completes under it; holding the features in memory does not."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "p"
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_RUN, "256", "3520", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert "layerprobe 0" in run.stdout, run.stderr[-2000:]
    assert "in-memory refused" in run.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["feature_store"]["bytes"] >= 4 * 256 * 2**20 and res["feature_store"]["images"] == 3520
    assert len(res["summary"]) == 14
    shutil.rmtree(out / ".features")  # a gigabyte: not left in pytest's kept temporary folders


def test_voc_ap_hand_worked_with_difficult_entries_in_the_test_half():
    """Five test images of one class, scores 0.9 ... 0.5, labels +, difficult, -, +, -. Without the difficult one:
    ranks +, -, +, -: precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1; the envelope from the right gives 1 up to
    recall 1/2 and 2/3 up to 1: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6. Counting the difficult image as a negative would
    give 1/2 + 1/2 * 1/2 = 3/4; scikit-learn's step sum without the envelope 1/2 * 1 + 1/2 * 2/3 as well here, so
    a second case tells them apart: +, -, -, +, + -> VOC 1/3 + 2/3 * 3/5 = 11/15, scikit-learn 1/3 + 1/3 * 1/2 +
    1/3 * 3/5."""
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    labels = np.array([[1], [0], [-1], [1], [-1]])
    ap = tx.class_aps(scores, labels, ["dog"])
    assert ap["dog"] == pytest.approx(5 / 6) and ap["mean"] == pytest.approx(5 / 6)
    assert tx.voc_ap(scores[:, 0], labels[:, 0] > 0) == pytest.approx(3 / 4)  # the difficult one as a negative
    second = np.array([True, False, False, True, True])
    assert tx.voc_ap(np.array([5.0, 4, 3, 2, 1]), second) == pytest.approx(1 / 3 + 2 / 3 * 3 / 5)
    sk = average_precision_score(second, np.array([5.0, 4, 3, 2, 1]))
    assert sk == pytest.approx(1 / 3 + 1 / 3 * 1 / 2 + 1 / 3 * 3 / 5) and sk != pytest.approx(11 / 15)


def test_pascal_softmax_reads_the_label_matrix():
    rng = np.random.default_rng(0)
    n, classes = 120, ["a", "b", "c"]
    y = -np.ones((n, 3))
    y[np.arange(n), rng.integers(0, 3, n)] = 1
    y[60:70, 2] = 0  # 'difficult only', in the test half
    x = torch.from_numpy(np.concatenate([(y > 0) * 3.0, rng.standard_normal((n, 5))], 1)).float()
    ap = tx.pascal(x, y, np.arange(60), np.arange(60, n), classes)
    assert set(ap) == {"a", "b", "c", "mean"} and ap["mean"] > 0.95


def test_commands_end_to_end(tmp_path, capsys):
    assert (
        main(
            [
                "transfer",
                "--model",
                "zfnet-small",
                "--data",
                "synthetic:80,4",
                "--split",
                "test",
                "--per-class",
                "3,5",
                "--folds",
                "2",
                "--test-per-class",
                "6",
                "--scratch-epochs",
                "1",
                "--out",
                str(tmp_path / "t"),
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert set(res["summary"]) == {"softmax/fc7/3", "softmax/fc7/5", "scratch/3", "scratch/5"}
    assert all(len(v["folds"]) == 2 for v in res["summary"].values())
    md = (tmp_path / "t" / "table.md").read_text()
    assert "Non-pretrained convnet" in md and "86.5 ± 0.5" in md and (tmp_path / "t" / "fig7.png").is_file()
    assert (
        main(
            [
                "layerprobe",
                "--model",
                "zfnet-small",
                "--data",
                "synthetic:80,4",
                "--split",
                "test",
                "--per-class",
                "4",
                "--folds",
                "2",
                "--test-per-class",
                "6",
                "--out",
                str(tmp_path / "p"),
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert res["layers"] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert len(res["summary"]) == 14 and (tmp_path / "p" / "layers.png").is_file()
    assert "SVM (7: fc7)" in (tmp_path / "p" / "table.md").read_text()
    assert (
        main(
            ["layerprobe", "--model", "zfnet-small", "--data", "synthetic:80,4", "--split", "test", "--per-class",
             "4", "--folds", "1", "--test-per-class", "6", "--layers", "conv5,fc7", "--out", str(tmp_path / "q"),
             "--no-progress"]
        )
        == 0
    )  # fmt: skip
    md = (tmp_path / "q" / "table.md").read_text()
    # rows by the paper's layer number: conv5 beside the paper's layer-5 figures, not layer 1's
    from zfnet.render.transfer import PAPER_TABLE6

    assert "SVM (5: conv5)" in md and "SVM (1:" not in md
    assert f"{PAPER_TABLE6['SVM (5)'][0][0]:.1f}" in md.split("SVM (5: conv5)")[1].splitlines()[0]
    capsys.readouterr()
    assert (
        main(["transfer", "--pretrained", "--data", "synthetic", "--protocol", "nope", "--out", str(tmp_path / "x")])
        == 2
    )
