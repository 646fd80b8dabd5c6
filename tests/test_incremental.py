"""Issue 23: incremental inference through any module graph (`zfnet.methods.incremental`).

Exact occlusion equals whole forwards at every position on torchvision ResNet-18 / ResNet-50 (additions),
DenseNet-121 (concatenations), MobileNet-V3 (squeeze-excitation products, hard-swish), ShuffleNet-V2 and a module
with chunk, split, unbind and a channel shuffle (issue 38: ops that return tuples), and a user module with
functional ReLUs, an addition and a concatenation - compared in float64, so that the two computations agree to
~1e-12 and a tolerance of 1e-9 leaves no room for luck. The rectangles are checked on hand-worked cases and
against the values that actually change; an op the replay does not know runs on whole maps where it sits; a
model whose recorded graph cannot stand for its forward falls back to whole forwards and says why; auto picks
by the estimate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_your_model import USER_MODULE
from torch import nn

from zfnet import data as zdata
from zfnet.layers import sites, stage_layers
from zfnet.methods.incremental import (
    CostModel,
    Rects,
    Region,
    Replay,
    Window,
    estimate,
    record,
    rects_of,
    union_rects,
    window_rects,
)
from zfnet.methods.occlusion import AUTO_MARGIN, occlusion, positions


def user_model() -> nn.Module:
    ns: dict = {}
    exec(USER_MODULE, ns)
    return ns["build"]()


def with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with running statistics other than 0 / 1, so that they are not identities."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


class _Tuples(nn.Module):
    """Issue 38: ops that return tuples - chunk, split, unbind - and the cat of their parts, with a channel
    shuffle (a view into groups, a transpose, a view back), as ShuffleNet's blocks have them."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.c1(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, F.relu(self.c2(b))], 1)
        p, q, r = torch.split(x, [2, 2, 4], dim=1)
        x = torch.cat([F.max_pool2d(torch.cat([q, p], 1), 2), F.relu(self.c3(r))], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)  # the channel shuffle
        u0, u1 = x.view(n, 2, c // 2, h, w).unbind(1)
        x = F.relu(self.c4(torch.cat([u1, u0], dim=1)))
        return self.fc(x.mean((2, 3)))


GRAPHS = [  # (builder, input size, window, stride, the ops expected on whole maps)
    (torchvision.models.shufflenet_v2_x0_5, 64, 16, 24, {"TensorBase.mean"}),  # chunk, channel shuffle
    (_Tuples, 24, 6, 5, {"TensorBase.mean"}),
    (torchvision.models.resnet18, 64, 16, 16, {"AdaptiveAvgPool2d"}),
    (torchvision.models.resnet50, 64, 16, 24, {"AdaptiveAvgPool2d"}),
    (torchvision.models.densenet121, 64, 16, 24, {"adaptive_avg_pool2d"}),
    (torchvision.models.mobilenet_v3_small, 64, 16, 24, {"AdaptiveAvgPool2d", "TensorBase.mul"}),
    (user_model, 32, 8, 6, {"TensorBase.mean"}),
]


@pytest.mark.parametrize("build,size,window,stride,whole", GRAPHS, ids=lambda v: getattr(v, "__name__", None))
def test_exact_equals_whole_forwards_through_additions_and_concatenations(build, size, window, stride, whole):
    """Every position, float64, the top stage as the feature layer (so the region passes every block), a
    per-pixel grey (a mean image that differs at every pixel), batches of 3 (partial batches, reordering)."""
    torch.manual_seed(0)
    model = with_statistics(build()).double()
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    layer = stage_layers(model, (3, size, size))[-1]
    pp = zdata.Preprocess(size, size, 3, "pad", 255.0).with_mean(torch.rand(3, size, size) * 200)
    kw = dict(window=window, stride=stride, preprocess=pp, layer=layer)
    exact = occlusion(model, x, strategy="exact", batch_size=3, **kw)[0]
    naive = occlusion(model, x, strategy="naive", **kw)[0]
    assert exact.strategy == "exact" and not exact.fallback, exact.fallback
    assert exact.channel == naive.channel and torch.equal(exact.top_class, naive.top_class)
    torch.testing.assert_close(exact.prob, naive.prob, rtol=1e-6, atol=1e-9)  # float32 softmax of float64 logits
    scale = float(naive.activity.abs().max())
    torch.testing.assert_close(exact.activity, naive.activity, rtol=1e-6, atol=1e-6 * scale)
    # additions and concatenations ran on regions: only the ops named here saw whole maps
    with torch.no_grad():
        graph, _ = record(model, x, sites(model, [layer], x)[layer])
    assert set(Replay.of(graph).whole_ops()) == whole


def test_an_adaptive_pool_to_its_own_size_passes_the_region_through():
    """VGG's AdaptiveAvgPool2d((7, 7)) meets a 7 x 7 map at 224 px: there it is the identity, and on a region it
    must stay one (run on the patch it would resample it). A small module with the same situation, in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d((8, 8)),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 5),
    ).double().eval()  # fmt: skip
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    kw = dict(window=4, stride=3, fill="mean-image", layer="conv2")
    exact, naive = occlusion(model, x, strategy="exact", **kw)[0], occlusion(model, x, strategy="naive", **kw)[0]
    assert exact.strategy == "exact" and not exact.fallback
    torch.testing.assert_close(exact.prob, naive.prob, rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        graph, _ = record(model, x, sites(model, ["conv2"], x)["conv2"])
    assert Replay.of(graph).whole_ops() == ["Flatten"]


def test_rectangles_by_hand():
    """conv 3x3, padding 1: changed rows 4..7 of 10 change outputs 3..8; ZFNet's conv1 (7x7, stride 2, padding
    1) from a 32 px square at the top of 224 px: outputs r with [2r - 1, 2r + 5] meeting 0..31, i.e. 0..16; a
    max-pool 3x3 stride 2 of those: [2r, 2r + 2] meeting 0..16, i.e. 0..8; at the map's edge the rectangle keeps
    its size and moves inside; the union of two rectangles per sample."""

    def win(k, s, p):
        return Window((k, k), (s, s), (p, p), (1, 1), 0.0, lambda t: t, k * k)

    r = window_rects(win(3, 1, 1), Rects([4], [0], 4, 10), 10, 10, None)
    assert (r.top, r.h) == ([3], 6)
    r = window_rects(win(7, 2, 1), Rects([0], [0], 32, 32), 110, 110, None)
    assert (r.top, r.h) == ([0], 17)
    r = window_rects(win(3, 2, 0), r, 55, 55, None)
    assert (r.top, r.h) == ([0], 9)
    # two samples: rows 0..3 and 6..9 of 10 through a 3x3 conv: 0..4 and 5..9, one size (5) for the batch
    r = window_rects(win(3, 1, 1), Rects([0, 6], [0, 0], 4, 4), 10, 10, None)
    assert (r.top, r.h) == ([0, 5], 5)
    # tau: at most ceil(0.3 * 10) = 3 rows, centred on each sample's own rectangle
    r = window_rects(win(3, 1, 1), Rects([2], [2], 4, 4), 10, 10, 0.3)
    assert (r.top, r.h) == ([2], 3)
    u = union_rects([Rects([1, 7], [0, 0], 2, 2), Rects([2, 0], [3, 3], 4, 1)], 10, 10)
    assert (u.top, u.h, u.left, u.w) == ([1, 0], 9, [0, 0], 4)  # sample 2 needs rows 0..8 (9 rows)


def test_rectangles_hold_every_value_that_changes():
    """Occlude the user module's input, run it whole, and compare every recorded value with the unoccluded
    one: each value that changes lies inside the rectangle `rects_of` gives its node."""
    torch.manual_seed(0)
    model = user_model().eval()
    x = torch.randn(1, 3, 32, 32)
    feat = sites(model, ["stage4"], x)["stage4"]
    with torch.no_grad():
        base, _ = record(model, x, feat)
        replay = Replay.of(base)
        for top, left in [(0, 0), (10, 18), (24, 24)]:
            y = x.clone()
            y[..., top : top + 8, left : left + 8] = 5.0
            occ, _ = record(model, y, feat)
            env = rects_of(replay, [top], [left], 8, None)
            assert len(occ.nodes) == len(base.nodes)
            for k in replay.live:
                a, b = base.nodes[k].value, occ.nodes[k].value
                if not isinstance(a, torch.Tensor) or a.dim() != 4:
                    continue
                changed = (a != b).any(1)[0]
                r = env[k]
                if r is None:
                    continue
                inside = torch.zeros_like(changed)
                inside[r.top[0] : r.top[0] + r.h, r.left[0] : r.left[0] + r.w] = True
                assert not (changed & ~inside).any(), (k, base.nodes[k].target)
                assert changed.any()  # and the rectangle is not about nothing


class _Centre(nn.Module):
    """An op the replay does not know (a leaf module that subtracts each map's mean: global, not pointwise)."""

    def forward(self, x):
        return x - x.mean((2, 3), keepdim=True)


def test_an_unknown_op_runs_on_whole_maps_where_it_sits():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _Centre(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).double().eval()  # fmt: skip
    x = torch.randn(1, 3, 24, 24, dtype=torch.float64)
    kw = dict(window=6, stride=6, fill="mean-image", layer="conv2")
    exact, naive = occlusion(model, x, strategy="exact", **kw)[0], occlusion(model, x, strategy="naive", **kw)[0]
    assert exact.strategy == "exact"
    torch.testing.assert_close(exact.prob, naive.prob, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(exact.activity, naive.activity, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        graph, _ = record(model, x, sites(model, ["conv2"], x)["conv2"])
    assert Replay.of(graph).whole_ops() == ["_Centre"]


class _Branchy(nn.Module):
    """Control flow on the input's values: the recorded graph is the unoccluded image's branch only."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = F.relu(self.c(x))
        y = F.relu(self.a(y) if x.mean() > 0.5 else self.b(y))
        return self.fc(y.mean((2, 3)))


def test_a_model_the_replay_cannot_follow_falls_back_to_whole_forwards_and_says_why():
    """One image a batch (the branch is taken per batch), so each occluded image takes its own branch."""
    torch.manual_seed(0)
    model = _Branchy().eval()
    x = torch.full((1, 1, 16, 16), 0.6)  # mean 0.6: branch a; a square of 0 at the centre: 0.45, branch b
    r = occlusion(model, x, window=8, stride=4, fill="mean-image", layer="c", strategy="exact", batch_size=1)[0]
    assert r.strategy == "naive" and r.settings.strategy == "exact" and "control flow" in r.fallback
    assert "fell back" in r.describe()
    want = torch.zeros(len(r.ys), len(r.xs))
    with torch.no_grad():
        for i, y in enumerate(r.ys.tolist()):
            for j, xx in enumerate(r.xs.tolist()):
                z = x.clone()
                z[..., y : y + 8, xx : xx + 8] = 0.0
                want[i, j] = F.softmax(model(z), 1)[0, r.target]
    torch.testing.assert_close(r.prob, want, rtol=1e-5, atol=1e-7)
    assert len(set(r.prob.flatten().tolist())) > 2  # both branches among the positions


def test_auto_runs_incremental_where_it_pays_and_whole_forwards_where_it_does_not():
    """An occluder the size of the image changes every map everywhere: incremental inference only adds copies,
    so auto runs whole forwards. An 8 px occluder at 121 positions of VGG-11's 128 px input changes a small
    share of the early maps, where most of its multiply-adds are: auto runs exact, and the estimate says why."""
    torch.manual_seed(0)
    vgg = torchvision.models.vgg11().eval()
    x = torch.randn(1, 3, 128, 128)
    small = occlusion(vgg, x, window=8, stride=12, fill="mean-image", layer="features.18", strategy="auto")[0]
    assert small.strategy == "exact" and small.settings.strategy == "auto" and small.estimated_speedup > 2
    assert "chosen by auto" in small.describe()
    whole = occlusion(vgg, x, window=128, stride=1, fill="mean-image", layer="features.18", strategy="auto")[0]
    assert whole.strategy == "naive" and whole.estimated_speedup < AUTO_MARGIN
    torch.testing.assert_close(
        whole.prob,
        occlusion(vgg, x, window=128, stride=1, fill="mean-image", layer="features.18", strategy="exact")[0].prob,
    )


def test_estimate_prices_the_rectangles():
    """With every cost but the multiply-adds at zero, the estimate is the conv and linear work: whole forwards do
    all of it per sample; incremental inference does the conv inside the rectangles (for one 3x3 conv on a
    10 x 10 map and a 2 x 2 occluder at the corner, 3 x 3 outputs of 100) and the linear layer in full, plus its
    fixed cost, three forwards of the image (recording it, checking it: a whole forward and a replay of two)."""
    conv = nn.Conv2d(2, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(400, 2)).eval()
    x = torch.randn(1, 2, 10, 10)
    with torch.no_grad():
        graph, _ = record(model, x, sites(model, ["0"], x)["0"])
    macs_only = CostModel(mac=1.0, element=0.0, call=0.0, sample=0.0)
    conv_macs, fc_macs = 4 * 100 * 2 * 9, 400 * 2
    e = estimate(Replay.of(graph), [([0], [0])], 2, None, macs_only)
    assert e.whole == conv_macs + fc_macs
    assert e.incremental == conv_macs * 9 / 100 + fc_macs + 3 * (conv_macs + fc_macs)
    five = estimate(Replay.of(graph), [([0] * 5, [0] * 5)], 2, None, macs_only)  # a batch of 5 at the corner
    assert five.whole == 5 * e.whole and five.incremental == 5 * (conv_macs * 9 / 100 + fc_macs) + 3 * e.whole
    assert positions(10, 2, 8) == [0, 8]


def test_region_crop_and_materialize():
    base = torch.arange(2 * 5 * 5, dtype=torch.float32).view(1, 2, 5, 5)
    reg = Region(base, [1, 3], [2, 0], -torch.ones(2, 2, 2, 2))
    full = reg.materialize()
    want = base.repeat(2, 1, 1, 1)
    want[0, :, 1:3, 2:4] = -1
    want[1, :, 3:5, 0:2] = -1
    assert torch.equal(full, want)
    crop = reg.crop([0, 1], [1, 0], 4, 3)
    assert torch.equal(crop, torch.stack([want[0, :, 0:4, 1:4], want[1, :, 1:5, 0:3]]))
