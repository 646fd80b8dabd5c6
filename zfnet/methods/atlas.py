"""Feature atlas (Fig. 2): for every feature map of chosen layers, its k strongest activations over a dataset,
each from a different image (each image's spatial maximum in that map), then their deconvnet projections and
receptive-field patches.

The scan is one streaming pass: per batch, the forward stops at the deepest layer asked; each map's per-image
maxima merge into a running top-k (ties go to the lower image index, so the result does not depend on batch
size or process count). It saves its state atomically as it goes and continues where it stopped when rerun
with the same arguments; under torchrun each process scans a contiguous shard and the shards' top-k merge.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
import torch.distributed as torch_dist
from torch import nn

from .. import data as zdata
from ..calling import api
from ..errors import UsageError
from ..layers import default_stage_layers, features, read_maps
from ..runtime import Dist, eval_mode, model_dtype
from ..settings import Settings, knob
from .deconvnet import Target


@dataclass
class TopK:
    """The k best (value, image, y, x) of every channel of one layer; columns are channels, rows rank 1..k."""

    values: torch.Tensor  # k x C, -inf where empty
    images: torch.Tensor  # k x C, -1 where empty
    ys: torch.Tensor  # k x C (-1 for fc layers)
    xs: torch.Tensor

    @classmethod
    def empty(cls, k: int, channels: int) -> TopK:
        return cls(
            torch.full((k, channels), float("-inf")),
            torch.full((k, channels), -1, dtype=torch.long),
            torch.full((k, channels), -1, dtype=torch.long),
            torch.full((k, channels), -1, dtype=torch.long),
        )

    @property
    def k(self) -> int:
        return self.values.shape[0]

    def merge(self, values: torch.Tensor, images: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> TopK:
        """Merge candidates (rows, C): the best k per column by value, ties to the lower image index."""
        v = torch.cat([self.values, values.float()])
        i = torch.cat([self.images, images])
        y = torch.cat([self.ys, ys])
        x = torch.cat([self.xs, xs])
        order = i.argsort(dim=0, stable=True)  # lower image first ...
        v, i, y, x = (t.gather(0, order) for t in (v, i, y, x))
        order = v.argsort(dim=0, descending=True, stable=True)[: self.k]  # ... then by value
        return TopK(*(t.gather(0, order) for t in (v, i, y, x)))

    def update(self, acts: torch.Tensor, image_idx: torch.Tensor) -> TopK:
        """Fold in one batch of feature maps (N x C x H x W, or N x C for fc layers)."""
        n, c = acts.shape[:2]
        if acts.dim() == 4:
            best, where = acts.flatten(2).max(2)  # first maximum in row-major order
            ys, xs = where // acts.shape[-1], where % acts.shape[-1]
        else:
            best = acts
            ys = xs = torch.full((n, c), -1, dtype=torch.long)
        images = image_idx.view(n, 1).expand(n, c)
        return self.merge(best.cpu(), images.cpu(), ys.cpu(), xs.cpu())

    def fired(self) -> TopK:
        """Only the entries where the unit fired (value > 0; issue 40): a rectified map that fired on fewer than k
        images keeps those, not zeros at (0, 0) of other images; the rest are marked empty (image -1)."""
        off = ~(self.values > 0)
        gone = torch.full_like(self.images, -1)
        return TopK(
            self.values.masked_fill(off, float("-inf")),
            torch.where(off, gone, self.images),
            torch.where(off, gone, self.ys),
            torch.where(off, gone, self.xs),
        )

    def count(self) -> torch.Tensor:
        """Per channel, how many entries the list holds (fewer than k: the unit fired on fewer images)."""
        return (self.images >= 0).sum(0)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}/values": self.values,
            f"{prefix}/images": self.images,
            f"{prefix}/ys": self.ys,
            f"{prefix}/xs": self.xs,
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str) -> TopK:
        return cls(t[f"{prefix}/values"], t[f"{prefix}/images"], t[f"{prefix}/ys"], t[f"{prefix}/xs"])


@dataclass
class Scan:
    """What a scan found: per layer, the top-k table and the feature-map shape."""

    top: dict[str, TopK]
    shapes: dict[str, tuple[int, ...]]
    images: int  # images scanned
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    per_class: dict[str, dict[int, TopK]] = field(default_factory=dict)  # layer -> class -> its top-k within it
    settings: AtlasSettings | None = None  # what `atlas` was asked (a pipeline's scan: None)
    maps: dict[str, dict] = field(default_factory=dict)  # layer -> the tensor read (`zfnet.layers.read_maps`)

    def to_json(self) -> dict:
        """Per layer and channel the top-k [{image, value, y, x}] (y, x None for fc layers)."""
        out = {}
        for name, tk in self.top.items():
            maps = []
            for c in range(tk.values.shape[1]):
                maps.append(
                    [
                        {
                            "image": int(tk.images[r, c]),
                            "value": float(tk.values[r, c]),
                            "y": int(tk.ys[r, c]) if tk.ys[r, c] >= 0 else None,
                            "x": int(tk.xs[r, c]) if tk.xs[r, c] >= 0 else None,
                        }
                        for r in range(tk.k)
                        if tk.images[r, c] >= 0
                    ]
                )
            out[name] = {"shape": list(self.shapes[name]), "maps": maps}
        settings = self.settings.to_json() if self.settings is not None else None
        return {
            "images": self.images,
            "seconds": self.seconds,
            "settings": settings,
            "feature_maps": self.maps,
            "layers": out,
        }


def default_layers(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[str]:
    """The layers Fig. 2 shows (`zfnet.layers.default_stage_layers`): conv1..conv5 for the Fig. 3 family, else
    the rectified output of each resolution stage, at most five, read at `input_shape`."""
    return default_stage_layers(model, input_shape)


def _shape(ds: zdata.ImageSet) -> tuple[int, int, int]:
    """C x S x S: the input a dataset's preprocessing gives."""
    pp = ds.preprocess
    return (pp.channels, pp.input_size, pp.input_size)


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tensor_hash(t: torch.Tensor | None) -> str | None:
    """A tensor's bytes, hashed (for result keys that depend on a mean image)."""
    return None if t is None else hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()[:16]


@dataclass
class ScanProgress:
    """Where one process's scan stands: the top-k tables (per-class ones under `_class_key` names), the maps'
    shapes, the positions of its share done, and the unreadable images met so far (index -> reason)."""

    top: dict[str, TopK]
    shapes: dict[str, tuple[int, ...]]
    done: int
    skipped: dict[int, str]


class ScanStore(Protocol):
    """Keeps a scan's progress between runs (the pipeline's; compute never writes a file): `load` gives back
    what an earlier run of the same scan saved, or None."""

    def load(self) -> ScanProgress | None: ...

    def save(self, progress: ScanProgress) -> None: ...


@dataclass(frozen=True)
class AtlasSettings(Settings):
    """Fig. 2's selection: which layers, and how many of each map's strongest activations (each from a different
    image) are kept."""

    method: ClassVar[str] = "atlas"

    layers: tuple[str, ...] | None = knob(
        None, "layers to scan (none: conv1..conv5, or each resolution stage's last layer; see zfnet layers)"
    )
    k: int = knob(9, "strongest activations kept per feature map, each from a different image (Fig. 2: 9)", low=1)


@api
def atlas(
    model: nn.Module,
    images: torch.Tensor | zdata.ImageSet,
    *,
    settings: AtlasSettings | None = None,
    batch_size: int = 128,
    progress: bool = False,
    **changes: Any,
) -> Scan:
    """Fig. 2's selection: for every feature map of `layers` (default `default_layers`), its `k` strongest
    activations over `images` - a batch of model input, or a dataset (`ImageSet`, read in batches with its own
    preprocessing) - each from a different image, ties to the lower image index. Settings (`AtlasSettings`) as a
    value or as keywords."""
    s = AtlasSettings.build(settings, **changes)
    ds = zdata.as_image_set(images)
    result = scan(
        model,
        ds,
        layers=list(s.layers or default_layers(model, _shape(ds))),
        k=s.k,
        batch_size=batch_size,
        workers=0,
        progress=progress,
    )
    result.settings = s
    return result


def scan(
    model: nn.Module,
    dataset: zdata.ImageSet,
    *,
    layers: list[str],
    k: int = 9,
    preprocess: zdata.Preprocess | None = None,
    batch_size: int = 128,
    workers: int = 4,
    store: ScanStore | None = None,
    dist: Dist | None = None,
    progress: bool = True,
    save_every: float = 30.0,
    desc: str = "atlas scan",
    per_class: int = 0,
    fired_only: bool = True,
) -> Scan:
    """One pass over `dataset` keeping each map's top-k (Fig. 2), fed through `preprocess` (default: the
    dataset's own). With `per_class`, the same pass also keeps each map's top-`per_class` within every class of
    the dataset (zennit-crp's per-class references: which maps fire for a class, on which of its images). With a
    `store` (the caller's: `zfnet.pipelines.atlas.ScanFile` keeps it in a file), resumable: where the scan stands
    is handed to `store.save` every `save_every` seconds and at the end, and a scan continues from what
    `store.load` gives back. Under torchrun, each process scans its shard; all get the merged result. With
    `fired_only` (the default), a rectified layer's lists hold only images where the unit fired (`TopK.fired`)."""
    dist = dist or Dist()
    pp = preprocess or dataset.preprocess
    if k < 1:
        raise UsageError("--k must be at least 1")
    share = torch.tensor_split(torch.arange(len(dataset)), dist.world)[dist.rank]
    top, shapes, done = _restored(store, len(share), dataset)
    last = time.monotonic()
    start = done
    lo = int(share[0]) if len(share) else 0

    def save() -> None:
        if store is not None:
            mine = {i: r for i, r in dataset.skipped.items() if lo <= i < lo + len(share)}
            store.save(ScanProgress(top, shapes, done, mine))

    chunks = zdata.chunked(share[done:], batch_size)
    maps: dict[str, dict] = {}
    dtype = model_dtype(model)
    t0 = time.perf_counter()
    with torch.no_grad(), eval_mode(model):  # the model's modes come back as they were
        for bases, labels, idx in zdata.batches(
            dataset, chunks, workers=workers, progress=progress and dist.main, desc=desc
        ):
            x = pp.eval_input(bases.to(dist.device)).to(dtype)
            feats = features(model, x, layers)
            maps = maps or read_maps(model, layers, x)
            for name in layers:
                if name not in top:
                    shapes[name] = tuple(feats[name].shape[1:])
                    top |= _empty_tables(name, feats[name].shape[1], k, per_class, len(dataset.classes))
                _update(top, name, feats[name], idx, labels if per_class else None)
            # resume counts positions, readable or not: every chunk up to this one's end is done
            done = min(start + ((int(idx[0]) - int(share[0]) - start) // batch_size + 1) * batch_size, len(share))
            if store is not None and time.monotonic() - last > save_every:
                save()
                last = time.monotonic()
    elapsed = time.perf_counter() - t0
    if not maps:  # a scan resumed with nothing left to read: the sites from an input of the right shape
        probe = torch.zeros(1, pp.channels, pp.input_size, pp.input_size, device=dist.device, dtype=dtype)
        maps = read_maps(model, layers, probe)
    done = len(share)
    save()
    readable = len(share) - sum(1 for i in dataset.skipped if lo <= i < lo + len(share))
    return _scanned(top, shapes, readable, elapsed, maps, dist, fired_only)


def _scanned(
    top: dict[str, TopK], shapes: dict, readable: int, elapsed: float, maps: dict, dist: Dist, fired_only: bool
) -> Scan:
    """The scan's result: every process's tables merged (torchrun), a rectified layer's lists cut to the images
    where the unit fired (`fired_only`), the per-class tables apart from the layers'."""
    if dist.world > 1:
        top = _merge_across_processes(top, list(top), dist)
        readable = int(_sum_across(readable, dist))
    if fired_only:
        top = {n: tk.fired() if maps.get(n.split("@class")[0], {}).get("rectified") else tk for n, tk in top.items()}
    classes: dict[str, dict[int, TopK]] = {}
    for key_c in [n for n in top if "@class" in n]:
        name, label = key_c.rsplit("@class", 1)
        classes.setdefault(name, {})[int(label)] = top.pop(key_c)
    return Scan(top, shapes, readable, elapsed, per_class=classes, maps=maps)


def _restored(store: ScanStore | None, share: int, dataset: zdata.ImageSet) -> tuple[dict, dict, int]:
    """(top-k tables, map shapes, positions done) of an earlier run of this scan that `store` kept, or a start
    from nothing; the unreadable images it met are the dataset's again."""
    saved = store.load() if store is not None else None
    if saved is None or not 0 <= saved.done <= share or not set(saved.shapes) <= set(saved.top):
        return {}, {}, 0
    dataset.skipped.update(saved.skipped)
    return saved.top, saved.shapes, saved.done


def _empty_tables(layer: str, maps: int, k: int, per_class: int, classes: int) -> dict[str, TopK]:
    """A layer's empty top-k table, and its per-class ones (every class, in every process: they merge alike)."""
    tables = {layer: TopK.empty(k, maps)}
    for c in range(classes if per_class else 0):
        tables[_class_key(layer, c)] = TopK.empty(per_class, maps)
    return tables


def _update(top: dict[str, TopK], layer: str, a: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor | None) -> None:
    """One batch's maps of `layer` into its top-k table, and into each of its classes' (`labels` given)."""
    top[layer] = top[layer].update(a, idx)
    for c in labels.unique().tolist() if labels is not None else []:
        mask = labels == c
        key_c = _class_key(layer, int(c))
        top[key_c] = top[key_c].update(a[mask.to(a.device)], idx[mask])


def _class_key(layer: str, c: int) -> str:
    """Where a layer's per-class table sits beside its own in the scan state (saved, resumed, merged alike)."""
    return f"{layer}@class{c}"


def _sum_across(v: float, dist: Dist) -> float:
    t = torch.tensor([float(v)], dtype=torch.float64)
    torch_dist.all_reduce(t)
    return float(t)


def _merge_across_processes(top: dict[str, TopK], layers: list[str], dist: Dist) -> dict[str, TopK]:
    merged = {}
    for name in layers:
        mine = top[name]
        gathered = []
        for tensor in (mine.values, mine.images, mine.ys, mine.xs):
            parts = [torch.empty_like(tensor) for _ in range(dist.world)]
            torch_dist.all_gather(parts, tensor.contiguous())
            gathered.append(torch.cat(parts))
        merged[name] = TopK.empty(mine.k, mine.values.shape[1]).merge(*gathered)
    return merged


def manifest_layers(result: Scan, dataset: zdata.ImageSet, fields: dict) -> dict:
    """Per layer and channel, the list of {image, id, label, value, y, x} (JSON-ready); with per-class references,
    also "per_class": {class name: per channel the same list within that class}."""

    def entries(tk: TopK, c: int) -> list[dict]:
        out = []
        for r in range(tk.k):
            i = int(tk.images[r, c])
            if i < 0:
                continue
            label = dataset.labels[i]
            out.append(
                {
                    "image": i,
                    "id": dataset.image_id(i),
                    "label": dataset.classes[int(label)] if label.dim() == 0 and len(dataset.classes) > 1 else None,
                    "value": float(tk.values[r, c]),
                    "y": int(tk.ys[r, c]),
                    "x": int(tk.xs[r, c]),
                }
            )
        return out

    out = {}
    for name, tk in result.top.items():
        maps = [entries(tk, c) for c in range(tk.values.shape[1])]
        out[name] = {"shape": list(result.shapes[name]), "channels": len(maps), **fields.get(name, {}), "maps": maps}
        if name in result.per_class:
            out[name]["per_class"] = {
                dataset.classes[label]: [entries(ctk, c) for c in range(ctk.values.shape[1])]
                for label, ctk in sorted(result.per_class[name].items())
            }
    return out


def token_region(image: torch.Tensor, grid: int, y: int, x: int, dim: float = 0.25) -> torch.Tensor:
    """The C x H x W display image with token (y, x) of a `grid` x `grid` patch grid kept and the rest dimmed."""
    h, w = image.shape[-2:]
    out = image * dim
    t, b, l, r = y * h // grid, (y + 1) * h // grid, x * w // grid, (x + 1) * w // grid
    out[:, t:b, l:r] = image[:, t:b, l:r]
    return out


def top_projections(
    dn,
    dataset: zdata.ImageSet,
    pp: zdata.Preprocess,
    tk: TopK,
    layer: str,
    channels: list[int],
    rf,
    device: torch.device = torch.device("cpu"),
    tokens: int | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For each channel: (k projections, k image patches) over the receptive-field box (Fig. 2), both
    k x C x h x w; patches in display pixels [0, 255]. `dn` is an open Deconvnet on the model. `tokens`: the
    layer is a g x g grid of patch tokens (its field is the whole image past the first attention layer): each
    patch is the whole image with the token's own region kept and the rest dimmed."""

    wanted = sorted({int(tk.images[r, c]) for c in channels for r in range(tk.k) if tk.images[r, c] >= 0})
    slot = {i: s for s, i in enumerate(wanted)}
    bases = torch.stack([dataset.base(i) for i in wanted]) if wanted else torch.zeros(0)
    x = pp.eval_input(bases.to(device)) if wanted else None
    targets, owners = [], []
    for c in channels:
        for r in range(tk.k):
            i = int(tk.images[r, c])
            if i < 0:
                continue
            y, xx = int(tk.ys[r, c]), int(tk.xs[r, c])
            targets.append(Target(slot[i], layer, c, None if y < 0 else y, None if xx < 0 else xx))
            owners.append(c)
    out: dict[int, tuple[list, list]] = {c: ([], []) for c in channels}
    if targets:
        assert x is not None  # there are targets, so images
        fields_ = dn.project_targets(x, targets, output="field")
        shown = pp.display(x)
        for t, c, f in zip(targets, owners, fields_):
            patch = rf.crop(shown[t.image : t.image + 1], t.y or 0, t.x or 0)[0]
            if tokens is not None:
                patch = token_region(patch, tokens, t.y or 0, t.x or 0)
            out[c][0].append(f.cpu())
            out[c][1].append(patch.cpu())
    return {
        c: (torch.stack(p) if p else torch.zeros(0), torch.stack(q) if q else torch.zeros(0))
        for c, (p, q) in out.items()
    }
