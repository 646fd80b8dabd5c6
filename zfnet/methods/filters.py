"""First-layer filters and their diagnostics (Fig. 5, Sec. 4.1 architecture selection).

Per filter of the first conv layer:
  rms        sqrt(mean(w^2)) over the filter (what feature scale clipping bounds, Sec. 3)
  dominant   rms >= `dominant` x the layer's median rms ("a few of them dominate", Fig. 5(a))
  frequency  power-weighted mean radial frequency of the filter's 2-D spectrum, cycles/pixel (Sec. 4.1:
             "a mix of extremely high and low frequency information, with little coverage of the mid
             frequencies"); 0 = flat, 0.5 = Nyquist
  dead       its rectified response never exceeds `dead` x the layer's median maximum response over the
             scanned images (an exact 0 = it never fired); needs the per-map maxima of an atlas scan
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .. import data as zdata
from ..calling import api
from ..errors import UsageError
from ..layers import layer_names, resolve_layer
from ..settings import Settings, knob
from .atlas import scan


@dataclass(frozen=True)
class FiltersSettings(Settings):
    """Fig. 5(a)'s diagnostics: the thresholds that call a filter dominant or dead (Sec. 4.1)."""

    method: ClassVar[str] = "filters"

    dominant: float = knob(2.0, "a filter is dominant when its RMS is at least this times the median RMS", above=1)
    dead: float = knob(
        0.01, "a filter is dead when its largest response is at most this share of the median largest", low=0, high=1
    )


def first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise UsageError("the model has no Conv2d layer; filters need a convolutional first layer")
    return conv


def radial_frequency(weight: torch.Tensor) -> torch.Tensor:
    """Per filter (out x in x kh x kw): mean radial frequency (cycles/pixel, 0..~0.7) weighted by spectral
    power, with the filter's mean removed. The DFT is taken at the kernel's own size (no zero padding, whose
    leakage would pull every estimate towards the middle): a pattern alternating every pixel scores 0.5."""
    w = weight.detach().float()
    w = w - w.mean(dim=(-1, -2), keepdim=True)
    kh, kw = w.shape[-2:]
    power = torch.fft.fft2(w).abs().pow(2).sum(1)  # out x kh x kw, summed over input channels
    radius = (torch.fft.fftfreq(kh).view(-1, 1) ** 2 + torch.fft.fftfreq(kw).view(1, -1) ** 2).sqrt()
    total = power.sum(dim=(-1, -2)).clamp_min(1e-20)
    return (power * radius).sum(dim=(-1, -2)) / total


@dataclass
class FilterReport:
    weight: torch.Tensor  # out x in x kh x kw
    rms: torch.Tensor
    dominant: torch.Tensor  # bool
    frequency: torch.Tensor
    max_response: torch.Tensor | None = None  # per filter, over the scanned images
    dead: torch.Tensor | None = None  # bool
    settings: FiltersSettings = field(default_factory=lambda: FiltersSettings())

    def summary(self) -> dict:
        n = len(self.rms)
        out = {
            "filters": n,
            "kernel": list(self.weight.shape[-2:]),
            "in_channels": int(self.weight.shape[1]),
            "rms_median": float(self.rms.median()),
            "rms_max": float(self.rms.max()),
            "dominant": int(self.dominant.sum()),
            "dominant_share": float(self.dominant.float().mean()),
            "energy_share_of_strongest": float(self.rms.pow(2).max() / self.rms.pow(2).sum().clamp_min(1e-20)),
            "frequency_mean": float(self.frequency.mean()),
            "frequency_quartiles": [float(q) for q in torch.quantile(self.frequency, torch.tensor([0.25, 0.5, 0.75]))],
            "thresholds": {
                "dominant": f"rms >= {self.settings.dominant} x median rms",
                "dead": f"max response <= {self.settings.dead} x median max response over the data",
            },
        }
        if self.dead is not None:
            out["dead"] = int(self.dead.sum())
            out["dead_share"] = float(self.dead.float().mean())
            assert self.max_response is not None  # dead is computed from it
            out["never_fired"] = int((self.max_response <= 0).sum())
        return out

    def to_json(self) -> dict:
        return {"summary": self.summary(), "filters": self.per_filter()}

    def per_filter(self) -> list[dict]:
        rows = []
        for i in range(len(self.rms)):
            r = {
                "filter": i,
                "rms": float(self.rms[i]),
                "dominant": bool(self.dominant[i]),
                "frequency": float(self.frequency[i]),
            }
            if self.dead is not None and self.max_response is not None:
                r["max_response"] = float(self.max_response[i])
                r["dead"] = bool(self.dead[i])
            rows.append(r)
        return rows


def analyse(
    weight: torch.Tensor, max_response: torch.Tensor | None = None, settings: FiltersSettings = FiltersSettings()
) -> FilterReport:
    """Diagnostics of first-layer filters; `max_response` (per filter, over a dataset) enables 'dead'."""
    w = weight.detach().float().cpu()
    rms = w.pow(2).mean(dim=(1, 2, 3)).sqrt()
    dominant = rms >= settings.dominant * rms.median()
    dead = None
    if max_response is not None:
        max_response = max_response.detach().float().cpu()
        dead = max_response <= settings.dead * max_response.median().clamp_min(0)
    return FilterReport(w, rms, dominant, radial_frequency(w), max_response, dead, settings)


def first_conv_name(model: nn.Module) -> str:
    """The layer name (as the atlas names layers) of the model's first convolution."""

    conv = first_conv(model)
    name = next((n for n in layer_names(model) if resolve_layer(model, n) is conv), None)
    if name is None:  # pragma: no cover - every Conv2d has a name
        raise UsageError("the first Conv2d of the model has no layer name")
    return name


@api
def filters(
    model: nn.Module,
    images: torch.Tensor | zdata.ImageSet | None = None,
    *,
    settings: FiltersSettings | None = None,
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = False,
    **changes: float,
) -> FilterReport:
    """Fig. 5 / Sec. 4.1: the first layer's filters and their diagnostics; with `images` (a batch of model input
    or a dataset) also each filter's largest rectified response over them, which tells the dead ones. Settings
    (`FiltersSettings`) as a value or as keywords."""
    s = FiltersSettings.build(settings, **changes)
    conv = first_conv(model)
    max_resp = None
    if images is not None:
        ds = zdata.as_image_set(images)
        name = first_conv_name(model)
        result = scan(model, ds, layers=[name], k=1, batch_size=batch_size, workers=workers, progress=progress)
        ds.check_readable()
        max_resp = result.top[name].values[0]
    return analyse(conv.weight, max_resp, s)
