"""`zfnet explore` as a library call: the live toolbox of Yosinski et al.'s Deep Visualization Toolbox, on this
paper's methods. `Explorer` holds an opened model, a dataset and optionally an atlas of the same model, and answers
what the page asks - an image's prediction, one layer's feature maps (Fig. 2's rectified maps, all at once), a
map's deconvnet projection from its strongest or a chosen unit with the receptive-field patch (Sec. 2.1), the
atlas's top-9 of that map (Fig. 2) and its per-class references, occlusion maps for a class (Fig. 6).
`explore_app` puts it behind a Starlette app: model work runs off the event loop, one request at a time on the
shared model (a lock), and no request reaches a file outside the app's assets and the atlas folder."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import data as zdata
from ..calling import first_nonfinite
from ..data.base import decode_image
from ..errors import UsageError
from ..layers import features
from ..methods.atlas import default_layers
from ..methods.deconvnet import RULES, Deconvnet, ProjectSettings, Target
from ..methods.evidence import UnitAt, evidence
from ..methods.occlusion import OcclusionSettings, occlusion
from ..methods.paint import Painter, PaintSettings
from ..methods.visualize import visualize
from ..readback import read_json
from ..receptive_field import cut_box, layer_field
from ..render.evidence import causal_tile
from ..render.explore import (
    activity_image,
    data_url,
    figure_data_url,
    map_grid,
    pixels_image,
    png,
    projection_image,
)
from ..render.occlusion import occlusion_plot
from ..render.visualize import unit_image
from ..runtime import eval_mode, model_device
from ..usercode import blame
from ..weights import Opened
from .evidence import unit_scores
from .fair import Busy, JobBook, ModelLock

# a job's chunk: occluded images of this many input pixels in all (4 at 28 px, 1 at 224 px), about what one
# interactive request costs, so that one waits at most about its own time behind a running job (issue 38)
JOB_CHUNK_PIXELS = 4 * 28 * 28
PAINTERS_KEPT = 8  # images being painted whose recorded forward is kept (each holds every live value of one forward)
WEB = os.path.join(os.path.dirname(os.path.dirname(__file__)), "web", "explore")


@dataclass(frozen=True)
class ExploreLimits:
    """What one request may ask of the server."""

    upload_bytes: int = 20 * 1024 * 1024  # an uploaded image file
    upload_pixels: int = 40_000_000  # its decoded width x height
    uploads_kept: int = 64  # uploaded images held (the oldest go first)
    images_cached: int = 32  # images whose feature maps are kept
    page_size: int = 48  # dataset thumbnails per page
    occlusion_positions: int = 4096  # occluder positions one occlusion request may compute
    job_seconds: float = 600.0  # an occlusion job that runs longer ends with an error (`zfnet explore --job-limit`)
    jobs_per_client: int = 8  # unfinished jobs one client (address) may have; one more is refused (429)
    jobs_total: int = 32  # unfinished jobs the server holds
    job_abandon_seconds: float = 60.0  # a job nobody polls for this long stops at its next chunk
    uploads_per_client: int = 16  # uploaded images kept per client (its oldest go first)


class Explorer:
    """The model work behind `zfnet explore` (use it as a context manager: the model stays in eval mode, one
    deconvnet per rectification mode open, and everything is restored on exit). Images are named by keys:
    "d<index>" a dataset image, "u<hex>" an upload."""

    def __init__(
        self,
        opened: Opened,
        dataset: zdata.ImageSet | None = None,
        atlas: str | None = None,
        limits: ExploreLimits = ExploreLimits(),
        index: str | None = None,
    ) -> None:
        self.opened, self.dataset, self.limits = opened, dataset, limits
        self.index = _open_index(index, opened) if index else None  # issue 39: every image x unit, queried
        self.model, self.pp = opened.model, opened.preprocess
        # the model's class names; the data's only when they are the model's outputs by index (the report's rule)
        fits = dataset is not None and opened.outputs is not None and len(dataset.classes) == opened.outputs
        self.classes = opened.classes or (dataset.classes if fits and dataset is not None else None)
        shape = (self.pp.channels, self.pp.input_size, self.pp.input_size)
        self.layers = default_layers(self.model, shape)
        self.atlas_dir = os.path.realpath(atlas) if atlas else None
        self.atlas: dict | None = None
        atlas_data: dict = {}
        if self.atlas_dir:
            self.atlas, atlas_data = _read_atlas(self.atlas_dir, opened)
        # the atlas's image numbers name this dataset's images only when it is the atlas's own
        self.atlas_same_data = (  # the atlas ran over this dataset, or its first images (--limit)
            dataset is not None
            and (atlas_data.get("spec"), atlas_data.get("split")) == (dataset.spec, dataset.split)
            and 0 < int(atlas_data.get("images") or 0) <= len(dataset)
        )
        self.lock = ModelLock()  # one model: one request at a time on it, interactive ones first
        self._uploads: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._evidence: OrderedDict[str, dict] = OrderedDict()
        self._visualized: dict[str, dict] = {}
        self._painters: OrderedDict[str, Painter] = OrderedDict()  # issue 38: each painted image's replay
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._fields: dict[str, Any] = {}
        self._stack = ExitStack()
        self._dn: dict[str, Deconvnet] = {}
        self.book = JobBook(limits.jobs_per_client, limits.jobs_total, limits.job_abandon_seconds)
        self.jobs = self.book.jobs
        self._owners: dict[str, list[str]] = {}  # client -> its uploads' keys, oldest first

    def __enter__(self) -> Explorer:
        self._stack.enter_context(eval_mode(self.model))
        for rule in RULES:
            self._dn[rule] = self._stack.enter_context(Deconvnet(self.model, rule=rule, other="gradient"))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    # --- what there is ------------------------------------------------------------------------------------
    def info(self) -> dict:
        ds = self.dataset
        return {
            "model": self.opened.name,
            "input": [self.pp.channels, self.pp.input_size, self.pp.input_size],
            "classes": self.classes,
            "layers": self.layers,
            "rules": list(RULES),
            "occlusion": self.occlusion_settings({}).to_json(),
            "dataset": {"images": len(ds), "classes": ds.classes, "page_size": self.limits.page_size} if ds else None,
            "atlas": {
                "layers": sorted(self.atlas),
                "per_class": any(v.get("per_class") for v in self.atlas.values()),
                "same_data": self.atlas_same_data,
                "classes": next((list(v["per_class"]) for v in self.atlas.values() if v.get("per_class")), []),
            }
            if self.atlas
            else None,
            "limits": {"upload_bytes": self.limits.upload_bytes, "upload_pixels": self.limits.upload_pixels},
            "index": {
                "layers": self.index.layers,
                "images": sum(s["images"] for s in self.index.manifest["sources"]),
                "classes": self.index.manifest["sources"][0].get("classes") or [],
            }
            if self.index
            else None,  # fmt: skip
        }

    def page(self, n: int, label: int | None = None) -> dict:
        """Dataset page n (from 0): each image's key, index and class name; `label`: that class's images only."""
        ds = self._need_dataset()
        idx = range(len(ds)) if label is None else [i for i in range(len(ds)) if int(ds.labels[i]) == label]
        per = self.limits.page_size
        pages = max(1, -(-len(idx) // per))
        if not 0 <= n < pages:
            raise UsageError(f"page {n} does not exist; pick 0..{pages - 1}")
        items = [
            {"key": f"d{i}", "index": i, "label": _name(ds.classes, int(ds.labels[i]))}
            for i in list(idx)[n * per : (n + 1) * per]
        ]
        return {"page": n, "pages": pages, "items": items}

    # --- images ---------------------------------------------------------------------------------------------
    def upload(self, data: bytes, name: str = "upload", client: str = "") -> dict:
        """Decode an uploaded image (the CLI's guards, a size and pixel cap) and keep it (`uploads_per_client` per
        client and `uploads_kept` in all, the oldest dropped); returns its key."""
        if not data:
            raise UsageError("the upload is empty; choose a PNG or JPEG file")
        if len(data) > self.limits.upload_bytes:
            raise UsageError(
                f"the upload is {len(data):,} bytes, more than {self.limits.upload_bytes:,}; send a smaller image"
            )
        img = decode_image(data, os.path.basename(name) or "upload", self.limits.upload_pixels)
        base = self.pp.bases([img])
        key = "u" + hashlib.sha256(data).hexdigest()[:16]
        self._uploads[key] = base
        self._uploads.move_to_end(key)
        mine = self._owners.setdefault(client, [])
        if key in mine:
            mine.remove(key)
        mine.append(key)
        while len(mine) > self.limits.uploads_per_client:
            self._uploads.pop(mine.pop(0), None)
        while len(self._uploads) > self.limits.uploads_kept:
            self._uploads.popitem(last=False)
        return {"key": key, "name": os.path.basename(name)}

    def _base(self, key: str) -> torch.Tensor:
        if key.startswith("d") and key[1:].isdigit():
            ds = self._need_dataset()
            i = int(key[1:])
            if not 0 <= i < len(ds):
                raise UsageError(f"image d{i} does not exist; the dataset has {len(ds)} images")
            return ds.base(i)[None]
        if key in self._uploads:
            return self._uploads[key]
        raise UsageError(f"no image {key!r}; pick a dataset image or upload one again (uploads are kept a while)")

    def _entry(self, key: str) -> dict:
        """The image's model input, logits and feature maps of every layer, computed once and kept."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        x = self.pp.eval_input(self._base(key)).to(model_device(self.model))
        logits = self.model(x)
        if first_nonfinite(logits) is not None:
            raise UsageError(f"the model's logits for image {key} hold NaN or inf; check the weights and --normalize")
        entry = {"x": x, "probs": F.softmax(logits.float(), 1)[0].cpu(), "maps": features(self.model, x, self.layers)}
        self._cache[key] = entry
        while len(self._cache) > self.limits.images_cached:
            self._cache.popitem(last=False)
        return entry

    def image_png(self, key: str, size: int = 224) -> bytes:
        return png(pixels_image(self.pp.display(self._entry(key)["x"])[0].cpu(), size))

    def thumbnail(self, key: str) -> bytes:
        return png(pixels_image(self.pp.display(self.pp.eval_input(self._base(key)))[0], 64))

    def predict(self, key: str, top: int = 5) -> dict:
        probs = self._entry(key)["probs"]
        p, c = probs.topk(min(top, probs.numel()))
        return {
            "key": key,
            "top": [{"class": int(k), "name": self._class_name(int(k)), "p": float(v)} for v, k in zip(p, c)],
        }

    # --- one layer --------------------------------------------------------------------------------------------
    def layer(self, key: str, layer: str) -> tuple[dict, bytes]:
        """The layer's feature maps for the image: the grid picture and, per map, its largest activation and where."""
        maps = self._maps(key, layer)
        image, geometry = map_grid(maps)
        flat = maps.flatten(1)
        best, where = flat.max(1)
        w = maps.shape[-1]
        per_map = [[round(float(v), 4), int(i) // w, int(i) % w] for v, i in zip(best, where)]
        return {"key": key, "layer": layer, "channels": maps.shape[0], "grid": geometry, "maps": per_map}, png(image)

    def _maps(self, key: str, layer: str) -> torch.Tensor:
        if layer not in self.layers:
            raise UsageError(f"layer {layer!r} is not one the explorer shows; pick one of {', '.join(self.layers)}")
        maps = self._entry(key)["maps"][layer][0].float().cpu()
        if maps.dim() != 3:
            raise UsageError(f"layer {layer!r} has no feature maps")
        return maps

    def project(
        self,
        key: str,
        layer: str,
        channel: int,
        settings: ProjectSettings = ProjectSettings(),
        y: int | None = None,
        x: int | None = None,
    ) -> dict:
        """Sec. 2.1: the map's projection to pixels from its strongest unit (or unit y, x), with the unit's
        receptive-field patch of the image beside it (Fig. 2's pairs)."""
        maps = self._maps(key, layer)
        y, x = _unit_of(maps, layer, channel, y, x)
        entry = self._entry(key)
        target = Target(0, layer, channel, y, x)
        proj = self._dn[settings.rule].project_targets(entry["x"], [target], unit=settings.unit)[0].cpu()
        rf = self._field(layer)
        box = rf.box(y, x)
        pixels = self.pp.display(entry["x"])[0].cpu()
        return {
            "key": key, "layer": layer, "map": channel, "settings": settings.to_json(), "unit": [y, x],
            "activation": float(maps[channel, y, x]), "box": list(box),
            "projection": data_url(projection_image(proj)),
            "field": data_url(projection_image(cut_box(proj, (0, 0), box), 112)),
            "patch": data_url(pixels_image(cut_box(pixels, (0, 0), box), 112)),
        }  # fmt: skip

    def evidence(self, key: str, layer: str, channel: int, y: int | None = None, x: int | None = None) -> dict:
        """Issue 36 for the clicked unit (or the map's strongest) on this image: per rule its weight dependence
        (the whole cascade), specificity and causal agreement (`zfnet.methods.evidence`), and its causal map as
        a picture; computed on demand, the last EVIDENCE_CACHE answers kept."""
        y, x = _unit_of(self._maps(key, layer), layer, channel, y, x)
        ck = f"{key}|{layer}|{channel}|{y}|{x}"
        if ck in self._evidence:
            self._evidence.move_to_end(ck)
            return self._evidence[ck]
        res = evidence(self.model, self._entry(key)["x"], at=[UnitAt(layer, channel, 0, (y, x))], preprocess=self.pp)
        unit = res.units[0]
        j = res.to_json()["units"][0]
        out = {
            "key": key, "layer": layer, "map": channel, "unit": [y, x], "activation": unit.activation,
            "scores": {r: unit_scores(j, r) for r in res.settings.rules}, "cascade": j["cascade"],
            "causal": data_url(causal_tile(unit.causal)) if unit.causal is not None else None,
            "causal_grid": j["causal_grid"], "causal_strategy": res.causal_strategy.get(layer),
            "rule_substituted": res.substituted, "settings": res.settings.to_json(),
        }  # fmt: skip
        self._evidence[ck] = out
        while len(self._evidence) > EVIDENCE_CACHE:
            self._evidence.popitem(last=False)
        return out

    def check_map(self, layer: str, channel: int, unit: tuple[int | None, int | None] | None = None) -> None:
        """Refuse a layer the explorer does not show, a map it does not have or a unit (y, x) outside the map, in one
        line."""
        if layer not in self.layers:
            raise UsageError(f"layer {layer!r} is not one the explorer shows; pick one of {', '.join(self.layers)}")
        shape = self._shape(layer)
        n = shape[0]
        if not 0 <= channel < n:
            raise UsageError(f"map {channel} does not exist in {layer} ({n} maps: 0..{n - 1})")
        if unit is not None:
            hw = shape[1:]
            if len(hw) != 2 or not all(v is not None and 0 <= v < m for v, m in zip(unit, hw)):
                where = f"inside {layer}'s {hw[0]}x{hw[1]} maps" if len(hw) == 2 else f"absent ({layer}: no positions)"
                raise UsageError(f"the unit y={unit[0]}, x={unit[1]} must be {where}; give both y and x")

    def _channels(self, layer: str) -> int:
        return self._shape(layer)[0]

    def _shape(self, layer: str) -> tuple[int, ...]:
        """A layer's maps' shape without the batch (channels first), from one forward of zeros, kept."""
        if layer not in self._shapes:
            shape = (1, self.pp.channels, self.pp.input_size, self.pp.input_size)
            with torch.no_grad():
                self._shapes[layer] = tuple(features(self.model, torch.zeros(shape), [layer])[layer].shape[1:])
        return self._shapes[layer]

    def visualize_map(self, layer: str, channel: int, unit: tuple[int, int] | None = None, tick=None) -> dict:
        """Issue 37: the map's optimized image (`zfnet.visualize`, VISUALIZE_STEPS steps): the channel objective,
        or with `unit` (y, x: the clicked unit) the neuron objective there; computed once and kept."""
        ck = f"{layer}|{channel}|{unit}"
        if ck not in self._visualized:
            how = {"objective": "neuron", "position": unit} if unit is not None else {"objective": "channel"}
            v = visualize(self.opened, layer=layer, units=(channel,), steps=VISUALIZE_STEPS, callback=tick, **how)
            self._visualized[ck] = {"layer": layer, "map": channel, "unit": list(unit) if unit else None,
                                    "objective": v.objective, "value": v.values[0], "steps": VISUALIZE_STEPS,
                                    "image": data_url(unit_image(v.images[0])), "color": v.color,
                                    "arithmetic": v.arithmetic}  # fmt: skip
        return self._visualized[ck]

    def _field(self, layer: str):
        if layer not in self._fields:
            shape = (self.pp.channels, self.pp.input_size, self.pp.input_size)
            self._fields[layer] = layer_field(self.model, layer, shape)
        return self._fields[layer]

    # --- the atlas --------------------------------------------------------------------------------------------
    def atlas_refs(self, layer: str, channel: int, cls: str | None = None) -> dict:
        """Fig. 2's top-k of the map over the atlas's images (its sprite: k projections over k patches), and for a
        class (by name: the atlas data's classes) the map's top images within it (per-class references, `zfnet
        atlas --per-class K`)."""
        if not self.atlas:
            raise UsageError("no atlas given; start with --atlas DIR (a `zfnet atlas --out DIR` of the same model)")
        if layer not in self.atlas:
            raise UsageError(f"the atlas has no layer {layer!r}; it has {', '.join(sorted(self.atlas))}")
        entry = self.atlas[layer]
        maps = entry["maps"]
        if not 0 <= channel < len(maps):
            raise UsageError(f"map {channel} is not in the atlas's {layer} (0..{len(maps) - 1})")
        out: dict = {"layer": layer, "map": channel, "top": maps[channel]}
        sprite = f"maps/{layer}/{channel:04d}.png"
        if os.path.isfile(os.path.join(self.atlas_dir or "", sprite)):
            out["sprite"] = "/atlas/" + sprite
        if cls is not None:
            per = entry.get("per_class") or {}
            if cls not in per:
                raise UsageError(f"the atlas keeps no references for class {cls!r}; make it with --per-class K")
            out["class"] = {"name": cls, "top": per[cls][channel]}
        return out

    def _sheet(self, layer: str, name: str) -> str | None:
        sheet = (self.atlas or {}).get(layer, {}).get("class_sheets", {}).get(name)
        return (
            "/atlas/" + sheet["file"]
            if sheet and os.path.isfile(os.path.join(self.atlas_dir or "", sheet["file"]))
            else None
        )

    def class_maps(self, layer: str, cls: str, top: int = 16) -> dict:
        """Which maps fire for a class (by name): the layer's maps ranked by their strongest activation within it."""
        if not self.atlas or layer not in self.atlas or not self.atlas[layer].get("per_class"):
            raise UsageError("the atlas keeps no per-class references; make it with `zfnet atlas --per-class K`")
        per = self.atlas[layer]["per_class"].get(cls)
        if per is None:
            raise UsageError(f"the atlas keeps no references for class {cls!r}")
        ranked = sorted(range(len(per)), key=lambda c: -(per[c][0]["value"] if per[c] else float("-inf")))
        maps = [{"map": c, "top": per[c]} for c in ranked[:top]]
        return {"layer": layer, "class": cls, "maps": maps, "sheet": self._sheet(layer, cls)}

    # --- occlusion --------------------------------------------------------------------------------------------
    # --- issue 39: the activation index ----------------------------------------------------------------------
    def index_top(self, layer: str, channel: int, k: int = 12, label: int | None = None, page: int = 0) -> dict:
        """The images where a unit fires most over the whole index (any k, any class, paged): each with its value,
        position and - when it is an image of the explorer's data - its key."""
        idx = self._need_index()
        if k < 1 or k > 100 or page < 0:
            raise UsageError("k must be 1 to 100 and page 0 or more")
        t = idx.top(layer, channel, k, label, offset=page * k)
        rows = t.to_pylist()
        for r in rows:
            r["key"] = self._key_of(r["source"], r["index"])
        return {"layer": layer, "map": channel, "label": label, "page": page, "k": k, "rows": rows}

    def index_units(self, key: str, k: int = 8) -> dict:
        """The units each indexed layer's image `key` drives most, from the index (a dataset image only)."""
        idx = self._need_index()
        image = self._index_image(key)
        if image is None:
            raise UsageError(f"image {key} is not in the index (uploads and other data are not); pick a dataset image")
        return {"key": key, "image": image, "rows": idx.units_of(image, k).to_pylist()}

    def _need_index(self):
        if self.index is None:
            raise UsageError("the explorer has no activation index; start it with --index IDX (zfnet index)")
        return self.index

    def _sources(self) -> dict[int, int]:
        """The index's source numbers holding the explorer's data -> their first image number."""
        ds = self.dataset
        if ds is None or self.index is None:
            return {}
        return {s["number"]: s["first_image"] for s in self.index.manifest["sources"]
                if (s["spec"], s["split"]) == (ds.spec, ds.split)}  # fmt: skip

    def _key_of(self, source: int, index: int) -> str | None:
        return (
            f"d{index}"
            if source in self._sources() and self.dataset is not None and index < len(self.dataset)
            else None
        )

    def _index_image(self, key: str) -> int | None:
        if not (key.startswith("d") and key[1:].isdigit()):
            return None
        i = int(key[1:])
        for s in self.index.manifest["sources"] if self.index else []:
            if s["number"] in self._sources() and i < s["images"]:
                return s["first_image"] + i
        return None

    def paint_settings(self, texts: dict[str, str]) -> PaintSettings:
        """A paint request's settings (its URL query by field name); the top layer unless one is named, refused
        in one line when the layer is not one the explorer shows."""
        given = PaintSettings.parse(texts)
        given.setdefault("layer", self.layers[-1])
        s = PaintSettings.build(None, **given)
        if s.layer not in self.layers:
            raise UsageError(f"layer {s.layer!r} is not one the explorer shows; pick one of {', '.join(self.layers)}")
        if s.map is not None:
            self.check_map(s.layer, s.map)
        return s

    def paint(self, key: str, mask_png: bytes, settings: PaintSettings) -> dict:
        """Issue 38: the image with the painted pixels covered (`zfnet.methods.paint.Painter`, kept per image and
        settings, so each stroke replays only the rectangle it changed): p, the top classes, the map's activity
        and its picture."""
        x = self._entry(key)["x"]
        mask = self._mask(mask_png, x)
        ck = f"{key}|{settings.fingerprint()}"
        painter = self._painters.get(ck)
        if painter is None:
            painter = Painter(self.model, self.pp, x, settings)
            self._painters[ck] = painter
            while len(self._painters) > PAINTERS_KEPT:
                self._painters.popitem(last=False)
        self._painters.move_to_end(ck)
        scale = float(painter.first.maps.max())
        r = painter.apply(mask)
        out = r.to_json()
        out["top"] = [{**t, "name": self._class_name(t["class"])} for t in out["top"]]
        out["target_name"] = self._class_name(r.target)
        out["activity_image"] = data_url(activity_image(r.maps, scale))
        return out

    def _mask(self, data: bytes, x: torch.Tensor) -> torch.Tensor:
        """A painted mask from its PNG (white = painted), of the model's input size."""
        if not data:
            raise UsageError("the paint request has no mask; send the mask as a PNG of the model's input size")
        img = decode_image(data, "mask", self.limits.upload_pixels)
        m = torch.as_tensor(np.asarray(img.convert("L"))) > 127
        if tuple(m.shape) != tuple(x.shape[-2:]):
            raise UsageError(
                f"the mask is {m.shape[1]}x{m.shape[0]} px, the model's input {x.shape[-1]}x{x.shape[-2]}; "
                "send a mask of the model's input size"
            )
        return m

    def occlusion_settings(self, texts: dict[str, str]) -> OcclusionSettings:
        """A request's occlusion settings (a URL query's text by field name): fitted to the input where the
        window or stride is not given (`OcclusionSettings.for_input`), the top default layer unless one is."""
        given = OcclusionSettings.parse(texts)
        given.setdefault("layer", self.layers[-1])
        settings = OcclusionSettings.for_input(self.pp.input_size, **given)
        if settings.window > self.pp.input_size:
            raise UsageError(
                f"occlusion setting window={settings.window}: must be at most the {self.pp.input_size} px input"
            )
        return settings

    def occlusion(self, key: str, target: int | None, settings: OcclusionSettings, progress=None) -> Unlocked:
        """Fig. 6 for the image and a class (None: the predicted one): computed here, its five panels drawn by the
        returned `Unlocked.finish()` (after the job releases the model)."""
        size, window, stride = self.pp.input_size, settings.window, settings.stride
        n = (-(-(size - window) // stride) + 1) ** 2
        if n > self.limits.occlusion_positions:
            raise UsageError(f"{n} occluder positions is more than {self.limits.occlusion_positions}; raise the stride")
        if target is not None and not 0 <= target < self._entry(key)["probs"].numel():
            raise UsageError(f"class {target} does not exist")
        entry = self._entry(key)
        chunk = max(1, JOB_CHUNK_PIXELS // (size * size))  # positions between two looks for interactive requests
        res = occlusion(self.opened, entry["x"], target=target, settings=settings, progress=progress, batch_size=chunk)
        shown = self.pp.display(entry["x"])[0].cpu()

        def finish() -> dict:  # the five panels, drawn without the model
            figure = figure_data_url(occlusion_plot(res[0], shown, self.classes))
            keep = ("target", "base_prob", "strategy", "computation", "seconds", "settings", "layer")
            return {"key": key, "figure": figure, **{k: res[0].to_json()[k] for k in keep}}

        return Unlocked(finish)

    # --- helpers ----------------------------------------------------------------------------------------------
    def _class_name(self, k: int) -> str:  # the model's class k
        return _name(self.classes, k)

    def _need_dataset(self) -> zdata.ImageSet:
        if self.dataset is None:
            raise UsageError("no dataset given; start with --data SPEC (or upload an image)")
        return self.dataset


def forget_finished(jobs: dict[str, dict], keep: int = 16) -> None:
    """Drop the oldest finished occlusion jobs beyond `keep` (in place); a running job is never dropped, so its
    poll always finds it."""
    finished = [j for j, s in jobs.items() if s["result"] is not None or s["error"] is not None]
    for old in finished[: max(0, len(jobs) - keep)]:
        jobs.pop(old)


EVIDENCE_CACHE = 64  # units whose evidence the explorer keeps
VISUALIZE_STEPS = 256  # steps of a clicked map's optimized image


def _unit_of(maps: torch.Tensor, layer: str, channel: int, y: int | None, x: int | None) -> tuple[int, int]:
    """The unit (y, x) of map `channel` asked for, or the map's strongest when neither is given; checked."""
    if not 0 <= channel < maps.shape[0]:
        raise UsageError(f"map {channel} does not exist in {layer} ({maps.shape[0]} maps: 0..{maps.shape[0] - 1})")
    if (y is None) != (x is None):
        raise UsageError("give both y and x of the unit, or neither (its strongest unit)")
    if y is None or x is None:
        where = int(maps[channel].flatten().argmax())
        y, x = where // maps.shape[-1], where % maps.shape[-1]
    if not (0 <= y < maps.shape[-2] and 0 <= x < maps.shape[-1]):
        raise UsageError(f"unit {y},{x} is outside {layer}'s {maps.shape[-2]}x{maps.shape[-1]} maps")
    return y, x


def _name(classes: list[str] | None, k: int) -> str:
    return classes[k] if classes and 0 <= k < len(classes) else str(k)


def _open_index(path: str, opened: Opened):
    """An activation index of this very model (name and weights), for the explorer."""
    from .index import open_index

    idx = open_index(path)
    have, want = idx.manifest.get("model", {}), opened.info()
    if (have.get("name"), have.get("weights_sha256")) != (want.get("name"), want.get("weights_sha256")):
        raise UsageError(f"the index {path} is of another model ({have.get('name')}); index this model first")
    return idx


def _read_atlas(folder: str, opened: Opened) -> tuple[dict, dict]:
    """The atlas's layers (per map its top-k; per-class references when kept) and the dataset it was made on, from
    its manifest, checked to be an atlas of this model (its name and weights)."""
    fix = "pass --atlas a folder `zfnet atlas --out` wrote for this model"
    manifest = read_json(os.path.join(folder, "manifest.json"), fix=fix)
    found = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(found, dict) or not found:
        raise UsageError(f"{folder!r} holds no atlas layers; {fix}")
    made_by = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    if (made_by.get("name"), made_by.get("weights_sha256")) != (opened.name, opened.weights_sha256):
        raise UsageError(
            f"the atlas in {folder!r} was made with {made_by.get('name')!r} (weights {made_by.get('weights_sha256')}), "
            f"not {opened.name!r} (weights {opened.weights_sha256}); {fix}"
        )
    data = manifest.get("dataset") if isinstance(manifest.get("dataset"), dict) else {}
    return found, data


# --- the server -----------------------------------------------------------------------------------------------


def _q_int(request, name: str, default: int | None = None) -> int | None:
    """A whole-number query parameter (absent or empty: `default`)."""
    v = request.query_params.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"{name} must be a whole number, not {v!r}") from None


def _worker(explorer: Explorer):
    """`work(fn, *args)`: model work in a worker thread, one at a time (the explorer's lock); a `UsageError` it
    raises reaches the app's one handler, and so does what the user's own model code raised (`usercode.blame`:
    one line naming it, a 400 like the CLI's exit 2)."""
    from starlette.concurrency import run_in_threadpool

    async def work(fn, *args, **kwargs):
        def locked():
            with explorer.lock, torch.no_grad():  # no_grad is per thread: set here, in the worker
                try:
                    return fn(*args, **kwargs)
                except Exception as e:
                    err = blame(e)
                    if err is None:
                        raise
                    raise err from None

        return await run_in_threadpool(locked)

    return work


def _image_routes(explorer: Explorer, work) -> list:
    """What the page asks of one image: its pixels, prediction, a layer's maps, a map's projection, the atlas."""
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def png(fn):
        async def handler(request):
            return Response(await work(fn, request.path_params["key"]), media_type="image/png")

        return handler

    async def page(request):
        return JSONResponse(await work(explorer.page, _q_int(request, "page", 0), _q_int(request, "class")))

    async def predict(request):
        return JSONResponse(await work(explorer.predict, request.path_params["key"]))

    async def layer(request):
        meta, picture = await work(explorer.layer, request.path_params["key"], request.path_params["layer"])
        return Response(picture, media_type="image/png") if request.url.path.endswith(".png") else JSONResponse(meta)

    async def project(request):
        p = request.path_params
        settings = ProjectSettings.build(None, **ProjectSettings.parse(dict(request.query_params)))
        y, x = _q_int(request, "y"), _q_int(request, "x")
        return JSONResponse(await work(explorer.project, p["key"], p["layer"], int(p["map"]), settings, y, x))

    async def unit_evidence(request):
        p = request.path_params
        y, x = _q_int(request, "y"), _q_int(request, "x")
        return JSONResponse(await work(explorer.evidence, p["key"], p["layer"], int(p["map"]), y, x))

    async def atlas(request):
        p, cls = request.path_params, request.query_params.get("cls")
        return JSONResponse(await work(explorer.atlas_refs, p["layer"], int(p["map"]), cls))

    async def class_maps(request):
        cls = request.query_params.get("cls", "")
        return JSONResponse(await work(explorer.class_maps, request.path_params["layer"], cls))

    return [
        Route("/api/dataset", page),
        Route("/api/image/{key}.png", png(explorer.image_png)),
        Route("/api/thumb/{key}.png", png(explorer.thumbnail)),
        Route("/api/predict/{key}", predict),
        Route("/api/layer/{key}/{layer}.png", layer),
        Route("/api/layer/{key}/{layer}", layer),
        Route("/api/project/{key}/{layer}/{map:int}", project),
        Route("/api/evidence/{key}/{layer}/{map:int}", unit_evidence),
        Route("/api/atlas/{layer}/{map:int}", atlas),
        Route("/api/classmaps/{layer}", class_maps),
    ]


def _paint_route(explorer: Explorer, work):
    """Issue 38: POST /api/paint/{key} - the body the mask (PNG), the query its settings (target, layer, map,
    fill or blur)."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def paint(request):
        settings = explorer.paint_settings(dict(request.query_params))
        body = await _capped_body(request, explorer.limits.upload_bytes, "mask")
        return JSONResponse(await work(explorer.paint, request.path_params["key"], body, settings))

    return Route("/api/paint/{key}", paint, methods=["POST"])


async def _capped_body(request, cap: int, what: str) -> bytes:
    parts, size = [], 0
    async for chunk in request.stream():  # keep no more than the cap (the rest is read and dropped)
        size += len(chunk)
        if size <= cap:
            parts.append(chunk)
    if size > cap:
        raise UsageError(f"the {what} is {size:,} bytes, more than {cap:,}; send a smaller image")
    return b"".join(parts)


def _index_routes(explorer: Explorer, work) -> list:
    """Issue 39: a unit's images over the whole activation index (paged, by class), an image's units."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def index_top(request):
        p = request.path_params
        k, page, label = _q_int(request, "k", 12), _q_int(request, "page", 0), _q_int(request, "class")
        return JSONResponse(await work(explorer.index_top, p["layer"], int(p["map"]), k, label, page))

    async def index_units(request):
        return JSONResponse(await work(explorer.index_units, request.path_params["key"], _q_int(request, "k", 8)))

    return [Route("/api/index/top/{layer}/{map:int}", index_top), Route("/api/index/units/{key}", index_units)]


def _upload_route(explorer: Explorer, work):
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def upload(request):
        body = await _capped_body(request, explorer.limits.upload_bytes, "upload")
        name = request.query_params.get("name", "upload")
        return JSONResponse(await work(explorer.upload, body, name, _client(request)))

    return Route("/api/upload", upload, methods=["POST"])


def _job_error(e: Exception) -> str:
    """A job's error as one line: a `UsageError`'s own, else what the model raised."""
    if isinstance(e, UsageError):
        return str(e)
    err = blame(e)
    if err is not None:
        return str(err)
    return f"the model raised {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _occlusion_routes(explorer: Explorer) -> list:
    """Occlusion as a job: started (its settings refused before any job exists), then polled for progress."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def start(request):
        key, target = request.path_params["key"], _q_int(request, "class")
        settings = explorer.occlusion_settings(dict(request.query_params))
        return _start_job(explorer, request, "occlusion", lambda tick: explorer.occlusion(key, target, settings, tick))

    async def start_visualize(request):  # issue 37: the clicked map's (or unit's) optimized image, a job (cached)
        layer, channel = request.path_params["layer"], int(request.path_params["map"])
        y, x = _q_int(request, "y"), _q_int(request, "x")
        unit = None if y is None and x is None else (y, x)
        explorer.check_map(layer, channel, unit)  # refused before any job exists
        return _start_job(
            explorer, request, "visualize", lambda tick: explorer.visualize_map(layer, channel, unit, tick)
        )

    async def poll(request):
        state = explorer.book.get(request.path_params["job"])
        if state is None:
            raise UsageError("no such job; start it again")
        return JSONResponse({k: state[k] for k in ("done", "total", "result", "error")})

    async def cancel(request):  # the job stops at its next chunk (or before it starts)
        state = explorer.book.get(request.path_params["job"])
        if state is None:
            raise UsageError("no such job; start it again")
        state["cancelled"] = True
        return JSONResponse({"cancelled": True})

    return [
        Route("/api/occlusion/{key}", start, methods=["POST"]),
        Route("/api/occlusion-job/{job}", poll),
        Route("/api/visualize/{layer}/{map:int}", start_visualize, methods=["POST"]),
        Route("/api/job/{job}", poll),
        Route("/api/job/{job}", cancel, methods=["DELETE"]),
    ]


@dataclass
class Unlocked:
    """A job's result whose last part (`finish()`: drawing its figure) runs after the model is released."""

    finish: Any


def _client(request) -> str:
    return request.client.host if request.client else ""


def _start_job(explorer: Explorer, request, what: str, call):
    """Run `call(tick)` as a job (`fair`: bounded per client, the model taken between interactive requests, a
    chunk at a time): its progress and result polled, its time limited, stopped when cancelled or abandoned."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    counted = {"occlusion": "positions", "visualize": "image-steps"}
    job = uuid.uuid4().hex[:12]
    state = explorer.book.admit(job, _client(request))
    limit = explorer.limits.job_seconds

    def tick(done: int, total: int) -> None:  # between chunks: interactive requests first; stops here
        state["done"], state["total"] = done, total
        why = explorer.book.stop_reason(state)
        if why is not None:
            raise UsageError(why)
        if time.time() - state["started"] > limit:
            raise UsageError(
                f"the {what} job ran past the explorer's limit of {limit:g} s ({done} of {total} {counted[what]}); "
                + ("use a larger stride or window, or " if what == "occlusion" else "")
                + "start zfnet explore with a larger --job-limit"
            )
        explorer.lock.between_chunks()

    def locked():
        with explorer.lock.job(), torch.no_grad():
            why = explorer.book.stop_reason(state)
            if why is not None:  # cancelled or abandoned while it waited
                raise UsageError(why)
            state["started"] = time.time()
            try:
                return call(tick)
            except Exception as e:
                err = blame(e)
                if err is None:
                    raise
                raise err from None

    async def run() -> None:
        try:
            made = await run_in_threadpool(locked)
            # drawing needs no model: done after the model is released (`Unlocked`), so it delays nobody's request
            state["result"] = await run_in_threadpool(made.finish) if isinstance(made, Unlocked) else made
        except Exception as e:  # noqa: BLE001 - the job ends with its error, kept as a value for the poll
            state["error"] = _job_error(e)

    state["task"] = asyncio.ensure_future(run())
    forget_finished(explorer.jobs)
    return JSONResponse({"job": job})


def explore_app(explorer: Explorer):
    """The Starlette app: the page and its assets, the JSON / PNG API, the atlas folder's pictures. Handlers
    raise `UsageError`; one exception handler answers it: 400 and the line the CLI would print."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def refused(request, exc: Exception):
        return JSONResponse({"error": str(exc)}, status_code=429 if isinstance(exc, Busy) else 400)

    async def index(request):
        return FileResponse(os.path.join(WEB, "index.html"), headers={"Cache-Control": "no-cache"})

    async def info(request):
        return JSONResponse(explorer.info())

    work = _worker(explorer)
    routes = [
        Route("/", index),
        Route("/api/info", info),
        _upload_route(explorer, work),
        _paint_route(explorer, work),
        *_image_routes(explorer, work),
        *_index_routes(explorer, work),
        *_occlusion_routes(explorer),
        Mount("/static", StaticFiles(directory=WEB), name="static"),
    ]
    if explorer.atlas_dir:
        routes.append(Mount("/atlas", StaticFiles(directory=explorer.atlas_dir), name="atlas"))
    return Starlette(routes=routes, exception_handlers={UsageError: refused})


def folder_app(folder: str):
    """`zfnet serve`: a report or atlas folder's files, and nothing outside it (Starlette's static files refuse
    any path that leaves the folder, symlinks included)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    return Starlette(routes=[Mount("/", StaticFiles(directory=folder, html=True))])
