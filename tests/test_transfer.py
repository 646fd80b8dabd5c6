"""Sec. 5.2-5.3 as commands: the fold protocol, features extracted once equal per-image forwards, the softmax
and SVM probes against scikit-learn run by hand, PASCAL's AP with 'difficult only' left out, the commands end to
end on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
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


def test_pascal_ap_leaves_difficult_out():
    rng = np.random.default_rng(0)
    n, classes = 120, ["a", "b", "c"]
    y = -np.ones((n, 3))
    y[np.arange(n), rng.integers(0, 3, n)] = 1
    y[:10, 2] = 0  # 'difficult only'
    x = torch.from_numpy(np.concatenate([(y > 0) * 3.0, rng.standard_normal((n, 5))], 1)).float()
    ap = tx.pascal(x, y, np.arange(60), np.arange(60, n), classes)
    assert set(ap) == {"a", "b", "c", "mean"} and ap["mean"] > 0.95
    # the same AP by hand for class c, the difficult entries left out
    test = np.arange(60, n)
    use = y[test, 2] != 0
    assert 0 <= ap["c"] <= 1 and average_precision_score(y[test][use, 2] > 0, x.numpy()[test][use, 2]) > 0.9


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
    capsys.readouterr()
    assert (
        main(["transfer", "--pretrained", "--data", "synthetic", "--protocol", "nope", "--out", str(tmp_path / "x")])
        == 2
    )
