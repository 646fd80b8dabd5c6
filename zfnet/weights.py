"""The zfnet weights file, and opening a model for analysis (the one room both live in).

A weights file written by zfnet (`save_weights`) is safetensors: the state dict, string metadata (model name,
class count and names, the run's recipe) and the Sec. 3 preprocessing the model was trained with - fit (pad or
resize), base and input size, channels, pixel scale as metadata, the per-pixel mean image as the tensor
`preprocess/mean_image`. `WeightsFile.read` reads all of it with one open of the file (and hashes the same
bytes), so opening a model never goes back to the file. Plain torch state dicts (`torch.load(weights_only=True)`,
never unpickling objects) are read too; they carry no preprocessing, which then comes from the model's defaults
and `mean=` ("data", a file, or "none").

    opened = open_model("zfnet", "zf.safetensors")          # -> Opened(model, preprocess, classes, ...)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from . import calling, models
from . import data as zdata
from .data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from .errors import UsageError, note
from .io import atomic_save_tensors, load_tensors, read_tensor_file
from .models import families
from .runtime import resolve_device, unwrap

MEAN_KEY = "preprocess/mean_image"
MEAN_CHOICES = (
    "--mean data (the mean image of --data's training split), --mean FILE (.safetensors or .npy) or --mean none"
)
_CLASSIFIER_KEYS = ("fc8.weight", "fc.weight", "classifier.6.weight", "classifier.weight", "head.weight")


# --- the file -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsFile:
    """Everything in one weights file, read once: the state dict, the string metadata, the stored mean image
    and the sha256 of the file's bytes (what results record as the weights' identity)."""

    path: str
    state: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str]
    mean: torch.Tensor | None = field(repr=False)
    sha256: str

    @classmethod
    def read(cls, path: str | os.PathLike) -> WeightsFile:
        """Read `path` (.safetensors, or a torch state dict / checkpoint with 'state_dict' or 'model')."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise UsageError(f"weights file {path!r} does not exist; check the path passed to --weights")
        meta: dict[str, str] = {}
        try:
            if path.endswith(".safetensors"):
                state, meta, sha = read_tensor_file(path)
            else:
                with open(path, "rb") as f:
                    raw = f.read()
                sha = hashlib.sha256(raw).hexdigest()
                loaded: Any = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
                if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
                    loaded = loaded["state_dict"]
                elif isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
                    loaded = loaded["model"]
                state = loaded
        except Exception as e:  # noqa: BLE001 - truncated, empty, not safetensors, pickled objects refused ...
            first = str(e).splitlines()[0][:120] if str(e) else ""
            raise UsageError(
                f"cannot read weights {path!r} ({type(e).__name__}: {first}); the file is damaged or not a "
                "weights file - pass a .safetensors file or a plain torch state dict"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UsageError(f"{path!r} holds no state dict of tensors; pass a .safetensors weights file")
        mean = state.get(MEAN_KEY)
        if any(k.startswith("model/") for k in state):  # a training checkpoint: its model part
            state = {k[len("model/") :]: v for k, v in state.items() if k.startswith("model/")}
        state = {k: v for k, v in state.items() if not k.startswith("preprocess/")}
        bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            raise UsageError(
                f"weights {path!r} hold NaN or Inf in tensor {bad!r}; the training run diverged or the file "
                "is damaged - use an earlier snapshot"
            )
        return cls(path, state, meta, mean, sha)

    @property
    def num_classes(self) -> int | None:
        """The class count the file was trained for (metadata, else the classifier's rows)."""
        if "num_classes" in self.metadata:
            try:
                return int(self.metadata["num_classes"])
            except ValueError:
                raise UsageError(
                    f"{self.path!r} has a damaged 'num_classes' record; re-save the weights with zfnet"
                ) from None
        key = next((k for k in _CLASSIFIER_KEYS if k in self.state), None)
        return int(self.state[key].shape[0]) if key else None

    @property
    def classes(self) -> list[str] | None:
        """Class names stored with the weights (None when the file carries none)."""
        try:
            names = json.loads(self.metadata["classes"]) if "classes" in self.metadata else None
        except ValueError:
            raise UsageError(f"{self.path!r} has a damaged 'classes' record; re-save the weights with zfnet") from None
        return [str(c) for c in names] if isinstance(names, list) else None

    def preprocess(self, model: nn.Module | None = None) -> zdata.Preprocess | None:
        """The stored Sec. 3 preprocessing (None when the file carries none). Files from before the fit was
        stored fall back to the model's defaults with the stored mean image."""
        if "preprocess" in self.metadata:
            try:
                return zdata.Preprocess.from_dict(json.loads(self.metadata["preprocess"]), self.mean)
            except (ValueError, KeyError, TypeError):
                raise UsageError(
                    f"{self.path!r} has a damaged 'preprocess' record; re-save the weights with zfnet"
                ) from None
        if self.mean is not None and model is not None:
            return default_preprocess(model).with_mean(self.mean)
        return None

    def load_into(self, model: nn.Module, model_name: str | None = None, strict: bool = True) -> nn.Module:
        """Load the state dict into `model`; a file made for another architecture is a one-line UsageError."""
        own = model.state_dict()
        missing = [k for k in own if k not in self.state]
        unexpected = [k for k in self.state if k not in own]
        wrong = [
            f"{k} {tuple(self.state[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if k in self.state and self.state[k].shape != v.shape
        ]
        if wrong or (strict and (missing or unexpected)):
            made_for = (
                f" (the file says it was made for model {self.metadata['model']!r})" if "model" in self.metadata else ""
            )
            parts = (
                f"shape mismatch: {', '.join(wrong[:2])}" if wrong else "",
                f"missing: {', '.join(missing[:3])}" if missing and strict else "",
                f"unexpected: {', '.join(unexpected[:3])}" if unexpected and strict else "",
            )
            name = model_name or models.name_of(model)
            raise UsageError(
                f"weights {self.path!r} do not fit model {name!r}{made_for}: {'; '.join(p for p in parts if p)}; "
                "pass the --model (and --num-classes) the weights were trained with"
            )
        model.load_state_dict(self.state, strict=strict)
        return model


def save_metadata(model: nn.Module, **extra: Any) -> dict[str, str]:
    """String metadata stored in every weights file zfnet writes (model name, class count, provenance)."""
    meta = {"model": models.name_of(model)}
    if isinstance(model, models.ConvNet):
        meta["num_classes"] = str(model.num_classes)
        meta["arch"] = json.dumps(model.arch.__dict__, default=lambda o: getattr(o, "__dict__", str(o)))
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return meta


def save_weights(model: nn.Module, path: str, pp: zdata.Preprocess | None, **meta: Any) -> None:
    """Weights as safetensors with the preprocessing (mean image as a tensor, the rest as metadata) and string
    metadata (model, classes, ...), written atomically."""
    net = unwrap(model)
    tensors = dict(net.state_dict())
    metadata = save_metadata(net, **meta)
    if pp is not None:
        if pp.mean_image is not None:
            tensors[MEAN_KEY] = pp.mean_image
        metadata["preprocess"] = json.dumps(pp.to_dict())
    atomic_save_tensors(tensors, path, metadata)


# --- preprocessing ------------------------------------------------------------------------------------------


def default_preprocess(model: nn.Module) -> zdata.Preprocess:
    """A fresh model's Sec. 3 preprocessing from its layer table (input size, channels, pixel range), no mean
    yet and `fit` left to the training data; a timm model's from its `pretrained_cfg` (size, crop share, mean
    and std); any other model torchvision's ImageNet normalisation at 224 px (resize 256, centre crop)."""
    c, s, _ = models.model_input_shape(model)
    if isinstance(model, models.ConvNet):
        return zdata.for_model(s, c, scale=model.arch.pixel_scale)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size") and cfg.get("mean") and cfg.get("std"):  # timm
        c = int(cfg["input_size"][0])
        if getattr(model, "patch_embed", None) is None:  # a ViT's is the size it was built for (img_size=)
            s = int(cfg["input_size"][-1])
        base = round(s / float(cfg.get("crop_pct") or 0.875))
        return zdata.Preprocess(s, base, c, "resize", 1.0, None, tuple(cfg["mean"])[:c], tuple(cfg["std"])[:c])
    if _users(model):  # issue 40: an image of the input size goes in as it is
        return _imagenet(c, s, s)
    return _imagenet(c, s, round(s * 256 / 224))


def _users(model: nn.Module) -> bool:
    """A user's own model: built from module:callable, or a module handed in that no library defined."""
    if hasattr(model, "zfnet_name"):
        return models.family(models.name_of(model)) is models.USER
    return not type(model).__module__.startswith(("torchvision.", "timm.", "zfnet."))


def _imagenet(channels: int, size: int, base: int) -> zdata.Preprocess:
    """torchvision's ImageNet recipe at `size` (grey models: the channel average of its statistics)."""
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    if channels != 3:
        mean, std = (sum(mean) / 3,) * channels, (sum(std) / 3,) * channels
    return zdata.Preprocess(size, base, channels, "resize", 1.0, None, tuple(mean), tuple(std))


NORMALIZE_CHOICES = "imagenet, none, or MEAN,STD (one pair for every channel, or C means then C stds, in [0, 1])"


FIT_CHOICES = ("paper", "resize", "none")


def with_input(
    pp: zdata.Preprocess, input_size: int | None = None, normalize: str | None = None, fit: str | None = None
) -> zdata.Preprocess:
    """`pp` at another input size and/or with another normalisation (`--normalize`: 'imagenet', torchvision's mean
    and std of [0, 1] pixels; 'none', [0, 1] pixels as they are; or 'MEAN,STD') and/or another fit (`--fit`,
    issue 40): 'paper' (Sec. 3: the base square 256/224 of the input, centre crop), 'resize' (base square = the
    input: an image of the input size goes in unchanged) or 'none' (images must have the input size). A new input
    size keeps the fit's margin: 256/224 for a paper-style one, none for the others."""
    if fit is not None and fit not in FIT_CHOICES:
        raise UsageError(f"--fit {fit!r}: pass one of {', '.join(FIT_CHOICES)}")
    if input_size is not None and input_size < 8:
        raise UsageError(f"--input-size {input_size} is too small; pass the side the model takes, e.g. 224")
    size = int(input_size) if input_size is not None else pp.input_size
    if fit is not None or size != pp.input_size:  # else the stored ones: the stored input, bit for bit
        paper = pp.base_size > pp.input_size if fit is None else fit == "paper"
        base = round(size * 256 / 224) if paper else size
        mode = pp.fit if fit is None else ("none" if fit == "none" else "resize")
        pp = replace(pp, input_size=size, base_size=base, fit=mode, mean_image=pp.mean_at(base))
    if normalize is None:
        return pp
    c = pp.channels
    if normalize == "imagenet":
        norm = _imagenet(c, pp.input_size, pp.base_size)
        return replace(pp, scale=1.0, mean_image=None, channel_mean=norm.channel_mean, channel_std=norm.channel_std)
    if normalize == "none":
        return replace(pp, scale=1.0, mean_image=None, channel_mean=None, channel_std=None)
    try:
        values = [float(v) for v in normalize.split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        values = [values[0]] * c + [values[1]] * c
    if len(values) != 2 * c or any(not math.isfinite(v) for v in values) or any(v <= 0 for v in values[c:]):
        raise UsageError(f"--normalize {normalize!r}: pass {NORMALIZE_CHOICES} (this model has {c} channels)")
    return replace(pp, scale=1.0, mean_image=None, channel_mean=tuple(values[:c]), channel_std=tuple(values[c:]))


def model_classes(model: nn.Module) -> list[str] | None:
    """The class names a model's family gives when it predicts that family's classes (`models.Family.classes`):
    a torchvision architecture with 1000 outputs has ImageNet-1k's, a timm one the names of timm's ImageNet
    info; others none."""
    name = models.name_of(model)
    f = models.family(name)
    return f.classes(f.arch(name), models.num_outputs(model))


def read_classes(path: str) -> list[str]:
    """Class names from a file: a JSON list, or one name per line (`--classes FILE`)."""
    if not os.path.isfile(path):
        raise UsageError(f"--classes {path!r}: no such file; pass a text file with one class name per line")
    from .readback import read_text

    text = read_text(path, what=f"--classes {path!r}", fix="pass a text file with one class name per line")
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark (Windows editors write one)
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if isinstance(found, (list, dict)):
        names = _json_classes(found, path)
    else:
        lines = text.splitlines()  # \n, \r\n and \r alike
        while lines and not lines[-1].strip():
            lines.pop()
        blank = next((i for i, l in enumerate(lines) if not l.strip()), None)
        if blank is not None:
            raise UsageError(f"--classes {path!r}: line {blank + 1} is blank; every line names one class, in order")
        names = [l.strip() for l in lines]
    if not names:
        raise UsageError(f"--classes {path!r} holds no class names; one name per line, or a JSON list")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise UsageError(
                f"--classes {path!r}: {n!r} at entry {i + 1} repeats entry {seen[n] + 1}; class names must differ"
            )
        seen[n] = i
    return names


def _json_classes(found: Any, path: str) -> list[str]:
    """Class names from JSON: a list of names, a list of [wnid, name] pairs, or Keras's
    imagenet_class_index.json ({"0": ["n01440764", "tench"], ...}, by index)."""

    def name_of(v: Any) -> str:
        if isinstance(v, list) and len(v) == 2 and all(isinstance(p, str) for p in v):
            return v[1]  # [wnid, name]
        if isinstance(v, (str, int, float)):
            return str(v)
        raise UsageError(f"--classes {path!r}: {v!r} is not a class name or a [wnid, name] pair")

    if isinstance(found, dict):
        try:
            order = sorted(found, key=int)
        except ValueError:
            raise UsageError(f"--classes {path!r}: a JSON object must map indices 0..N-1 to names") from None
        if [int(k) for k in order] != list(range(len(order))):
            raise UsageError(f"--classes {path!r}: the indices are not 0..{len(order) - 1}; each class needs one")
        return [name_of(found[k]) for k in order]
    if isinstance(found, list):
        return [name_of(v) for v in found]
    raise UsageError(f"--classes {path!r}: pass one name per line, a JSON list, or imagenet_class_index.json")


# --- torchvision's own weights, by the name of their enum ---------------------------------------------------

HubWeights = models.HubWeights
torchvision_weights = families.torchvision_weights


def read_mean_file(path: str) -> torch.Tensor:
    """A mean image from a .safetensors file (its one tensor, or 'mean' / 'preprocess/mean_image') or a .npy
    array (C x H x W, or H x W (x C)), in raw [0, 255] pixel units."""
    if not os.path.isfile(path):
        raise UsageError(f"--mean {path!r}: no such file; pass data, none or an existing .safetensors/.npy file")
    try:
        if path.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
            t = torch.from_numpy(np.array(arr, dtype=np.float32))
            if t.dim() == 2:
                t = t[None]
            elif t.dim() == 3 and t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
                t = t.permute(2, 0, 1)
        else:
            tensors = load_tensors(path)
            found = next((tensors[k] for k in ("mean", MEAN_KEY) if k in tensors), None)
            if found is None and len(tensors) == 1:
                found = next(iter(tensors.values()))
            if found is None:
                raise UsageError(
                    f"--mean {path!r} holds {len(tensors)} tensors and none named 'mean'; "
                    "save the mean image alone or under 'mean'"
                )
            t = found
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UsageError(
            f"cannot read mean image {path!r} ({type(e).__name__}); pass a .safetensors or .npy file"
        ) from None
    if t.dim() != 3 or not torch.isfinite(t).all():
        raise UsageError(f"--mean {path!r} is not a finite C x H x W image (shape {tuple(t.shape)})")
    return t.float()


def data_mean(
    pp: zdata.Preprocess, data: str | None, split: str | None = None, workers: int = 0, progress: bool = True
) -> torch.Tensor:
    """The per-pixel mean image of `data`'s training split (else of `split`), as `zfnet train` computes it."""
    if not data:
        raise UsageError("--mean data needs --data (the dataset whose training-split mean to use); or pass --mean FILE")
    try:
        ds = zdata.open_dataset(data, "train", pp)
    except UsageError:
        ds = zdata.open_dataset(data, split, pp)
        note(f"--mean data: {data} has no train split; the mean image is that of split {ds.split!r}")
    return zdata.mean_image(ds, workers=workers, progress=progress)


def with_data_grey(
    opened: Opened, data: str | zdata.ImageSet | None, split: str | None = None, workers: int = 0
) -> Opened:
    """`opened` with Sec. 4.2's grey taken from the data (issue 40) when its preprocessing does not give one: the
    mean pixel of `data`'s training split (else of `split`; an opened image set: of its images), from the mean
    image computed once and cached (`zdata.mean_image`). Without data, or with a mean known, unchanged (the grey
    is then the mean's, or mid-grey 128, and `Preprocess.grey_source` says which)."""
    pp = opened.preprocess
    if data is None or pp.knows_grey:
        return opened
    if isinstance(data, zdata.ImageSet):
        crop = data.preprocess.center(zdata.mean_image(data, workers=workers)[None])[0]
    else:
        crop = pp.center(data_mean(pp, data, split, workers)[None])[0]
    grey = tuple(float(v) for v in crop.double().mean((1, 2)))
    note(f"grey (occluder, masks, uncovered pixels): {'/'.join(f'{round(v):d}' for v in grey)}, the data's mean pixel")
    return replace(opened, preprocess=replace(pp, data_grey=grey))


def apply_mean(
    pp: zdata.Preprocess, mean: str | None, data: str | None = None, split: str | None = None, workers: int = 0
) -> zdata.Preprocess:
    """`pp` with the mean asked for: None keeps it, 'none' drops it, 'data' computes it, else a file."""
    if mean is None:
        return pp
    if mean == "none":
        return pp.with_mean(None)
    if mean == "data":
        return pp.with_mean(data_mean(pp, data, split, workers))
    try:
        return pp.with_mean(read_mean_file(mean))
    except UsageError as e:
        if mean in str(e):
            raise
        raise UsageError(f"--mean {mean!r}: {e}") from None


# --- opening a model ----------------------------------------------------------------------------------------


@dataclass
class Opened:
    """A model ready for analysis with what it came with: its preprocessing, class names and where its
    weights came from. Every pipeline takes one of these; the CLI opens it once from its flags."""

    model: nn.Module
    preprocess: zdata.Preprocess
    name: str
    weights: str | None = None  # the weights file's path (None: initialization, or a module handed in)
    classes: list[str] | None = None
    weights_sha256: str | None = None
    mean: str | None = None  # the `mean=` it was opened with (None: the weights' own)
    weights_enum: str | None = None  # torchvision weights named by their enum (ResNet18_Weights.IMAGENET1K_V1)
    outputs: int | None = None  # how many logits one forward gives (None: not a batch of vectors, or not counted)
    initial: str | None = None  # without weights: what the model is (`models.Family.initial`); None: a module

    def info(self) -> dict[str, Any]:
        """The model part of every result's provenance (with the input it takes)."""
        out = {"name": self.name, "weights": self.weights, "weights_sha256": self.weights_sha256}
        if self.weights_enum:
            out["weights_enum"] = self.weights_enum
        if self.weights is None and self.initial:
            out["initialization"] = self.initial
        return {**out, "preprocess": self.preprocess.to_dict()}


def open_model(
    name: str | None,
    weights: str | os.PathLike | WeightsFile | None = None,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    mean: str | None = None,
    data: str | None = None,
    split: str | None = None,
    workers: int = 0,
    overrides: dict | None = None,
    input_size: int | None = None,
    normalize: str | None = None,
    classes: list[str] | None = None,
    output: int | str | None = None,
    fit: str | None = None,
) -> Opened:
    """Model `name` (a registry name, torchvision:/timm:<name> or module:callable) with its weights and their
    stored preprocessing and class names, or (no weights) at its initialization, seeded so that every torchrun
    rank and every rerun sees the same network. The weights file is read once; for torchvision models
    `weights` may name the weights enum (IMAGENET1K_V1, DEFAULT), found in torch hub's cache. `mean` overrides
    the mean image (see `apply_mean`); weights of a paper-style model that carry none must be given one.
    `input_size` / `normalize` / `fit` replace the input side, normalisation and fit (`with_input`), `classes` the class
    names. `overrides` are the architecture overrides the weights were trained with (a recipe's
    model_overrides). `output` picks the logits in a forward's tuple or mapping (`zfnet.calling.pick`); one forward
    of zeros checks the input size and counts the outputs the class names must match. The embedded model:
    `zfnet.pretrained.open_embedded`."""
    device = resolve_device(device)  # as --device: "cuda" without a GPU is one line
    if not name:
        raise UsageError(
            "pass --model NAME (see `zfnet models`), with --weights FILE for a trained model, or --pretrained"
        )
    family = models.family(name)
    hub = None
    if isinstance(weights, str) and not os.path.isfile(weights):
        hub = family.hub(family.arch(name), weights)
    if weights is not None:
        wf = weights if isinstance(weights, WeightsFile) else WeightsFile.read(hub.path if hub else weights)
        model = models.build(name, num_classes=wf.num_classes, **(overrides or {}))
        wf = replace(wf, state=family.adapt(family.arch(name), wf.state))
        wf.load_into(model, model_name=name)
        model = model.to(device).eval()
        pp = hub.preprocess if hub else wf.preprocess(model)
        if pp is None:
            pp = default_preprocess(model)
            if mean is None and normalize is None and isinstance(model, models.ConvNet):
                raise UsageError(f"{wf.path!r} carries no mean image (Sec. 3 preprocessing); pass {MEAN_CHOICES}")
        pp = apply_mean(with_input(pp, input_size, normalize, fit), mean, data, split, workers)
        n = _ready(model, pp, name, input_size, output)
        names = classes or wf.classes or (hub.classes if hub else None) or model_classes(model)
        fitted = _fit_classes(names, n)
        return Opened(model, pp, name, wf.path, fitted, wf.sha256, mean, hub.enum if hub else None, n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.build(name, **(overrides or {}))
    model = model.to(device).eval()
    pp = apply_mean(with_input(default_preprocess(model), input_size, normalize, fit), mean, data, split, workers)
    n = _ready(model, pp, name, input_size, output)
    initial = family.initial(name, seed)
    note(
        f"no --weights: {name} {initial}"
        + ("" if pp.mean_image is not None or pp.channel_mean is not None else ", no mean image")
    )
    names = _fit_classes(classes or model_classes(model), n)
    return Opened(model, pp, name, mean=mean, classes=names, outputs=n, initial=initial)


def _ready(model: nn.Module, pp: zdata.Preprocess, name: str, input_size: int | None, output) -> int | None:
    """The input size is checked against the memory there is, one forward counts the outputs, and a forward that
    returns more than logits (a tuple, a mapping) reads as its logits from then on (`output`)."""
    which = calling.parse_output(output)
    if input_size is not None:
        calling.check_input_size(model, pp.channels, pp.input_size)
    n, picks = calling.count_outputs(model, pp.channels, pp.input_size, f"--model {name}", which)
    if picks:
        calling.install(model, which)
    return n


def _fit_classes(names: list[str] | None, n: int | None) -> list[str] | None:
    """Class names checked against the model's output count (a list that does not fit is refused)."""
    if names is not None and n is not None and len(names) != n:
        raise UsageError(
            f"{len(names)} class names for a model with {n} outputs; pass --classes with one name per output"
        )
    return names


def opened_module(
    model: nn.Module,
    preprocess: zdata.Preprocess | None = None,
    classes: list[str] | None = None,
    name: str | None = None,
) -> Opened:
    """Any `nn.Module` a Python user holds, as an `Opened` (its preprocessing defaults to the model's: the Fig. 3
    family's table, a timm model's `pretrained_cfg`, else torchvision's ImageNet normalisation at 224 px; its
    class names to its family's, see `model_classes`). The module is not changed: every analysis runs it in
    eval mode and restores its modes afterwards."""
    pp = preprocess or default_preprocess(model)
    n = models.num_outputs(model)
    names = _fit_classes(classes or model_classes(model), n)
    return Opened(model, pp, name or models.name_of(model), None, names, outputs=n)


__all__ = [
    "MEAN_CHOICES",
    "MEAN_KEY",
    "NORMALIZE_CHOICES",
    "HubWeights",
    "Opened",
    "WeightsFile",
    "apply_mean",
    "data_mean",
    "default_preprocess",
    "model_classes",
    "open_model",
    "opened_module",
    "read_classes",
    "read_mean_file",
    "save_metadata",
    "save_weights",
    "torchvision_weights",
    "with_input",
]
