"""Sec. 3 preprocessing: a square base image (smallest side to 256, centre 256 crop), per-pixel mean subtraction,
random 224 crops + horizontal flips for training, and 10 crops (4 corners + centre, with and without flip) for
evaluation.

Images travel as uint8 base squares (C x B x B); `Preprocess` turns batches of them into model input.
For 28 px digit images the base square is the image zero-padded to 32 (28/32 = 224/256), so the centre crop is
the image itself.

A trained model's `Preprocess` is stored in its weights file (`zfnet.checkpoints`) and read back by every
loader; calling it on images gives the model's centre-crop input, like torchvision's `weights.transforms()`.
Pixels are read as 8-bit: 16-bit images (mode I;16, scanners, microscopes) are divided by 257 and float
images in [0, 1] multiplied by 255, so a 16-bit copy of a picture gives the same input as its 8-bit version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from ..errors import UsageError

# torchvision's ImageNet statistics, for torchvision models trained with them
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class Preprocess:
    """How raw images become model input (Sec. 3)."""

    input_size: int  # crop fed to the model, px (224)
    base_size: int  # side of the square the crops come from, px (256)
    channels: int  # 1 (grey) or 3 (RGB)
    # "resize": smallest side -> base_size + centre crop; "pad": zero-pad to base_size (images up to that size).
    # "none": images already of the input size, fed as they are (`--fit none`). None: not decided yet - a
    # dataset's kind decides when a fresh model is trained (digits pad, photos resize).
    fit: str | None = None
    # The paper feeds raw pixel values: "input images are roughly in the [-128,128] range" after the mean.
    scale: float = 255.0
    mean_image: torch.Tensor | None = field(default=None, repr=False)  # C x B x B, raw [0, 255] pixel units
    channel_mean: tuple[float, ...] | None = None  # alternative to mean_image (torchvision models), in [0, 1]
    channel_std: tuple[float, ...] | None = None
    # Sec. 4.2's grey when neither a mean image nor a normalisation mean says it: the data's mean pixel (0-255)
    data_grey: tuple[float, ...] | None = None

    @classmethod
    def torchvision(cls, input_size: int = 224, base_size: int = 256) -> Preprocess:
        """torchvision's ImageNet recipe: [0, 1] pixels, per-channel mean and std."""
        return cls(input_size, base_size, 3, "resize", 1.0, None, IMAGENET_MEAN, IMAGENET_STD)

    def with_mean(self, mean_image: torch.Tensor | None) -> Preprocess:
        """The same preprocessing with `mean_image` (C x B x B, raw pixel units; None: no mean subtracted).
        A per-pixel mean replaces any channel normalisation."""
        if mean_image is None:
            return replace(self, mean_image=None)
        want = (self.channels, self.base_size, self.base_size)
        if tuple(mean_image.shape) != want:
            raise UsageError(
                f"mean image of shape {tuple(mean_image.shape)} does not fit this model's base square "
                f"{want}; pass a mean image of that shape (or --mean data)"
            )
        return replace(self, mean_image=mean_image.float().cpu(), channel_mean=None, channel_std=None)

    # --- images -> model input -------------------------------------------------------------------------
    def __call__(self, images) -> torch.Tensor:
        """Images -> the model's centre-crop input, N x C x S x S float (like torchvision's
        `weights.transforms()`). Takes a PIL image or a list of them, an H x W or H x W x C array, a list of
        arrays, or a uint8 tensor C x H x W, N x H x W or N x C x H x W (a 3-D tensor whose first size is 1
        or the model's channel count is one C x H x W image; any other is N x H x W)."""
        return self.eval_input(self.bases(images))

    def bases(self, images) -> torch.Tensor:
        """Images as in `__call__` -> N x C x B x B uint8 base squares."""
        if isinstance(images, torch.Tensor):
            if images.dim() == 2 or (images.dim() == 3 and images.shape[0] in (1, self.channels)):
                return self.base(images)[None]
            if images.dim() in (3, 4):
                if images.dtype == torch.uint8:
                    return self.base_batch(images)
                return torch.stack([self.base(im) for im in images])
            raise ValueError(
                f"expected a C x H x W, N x H x W or N x C x H x W tensor, got shape {tuple(images.shape)}"
            )
        if isinstance(images, (Image.Image, np.ndarray)):
            return self.base(images)[None]
        if isinstance(images, Sequence) and images:
            return torch.stack([self.base(im) for im in images])
        raise ValueError("expected a PIL image, an array, a tensor or a non-empty list of them")

    # --- one image -> uint8 base square --------------------------------------------------------------
    def base(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        """A PIL image, H x W (x C) array or C x H x W tensor -> C x B x B uint8 base square."""
        if isinstance(image, torch.Tensor):
            arr = image.detach().cpu().numpy()
            image = arr if arr.ndim == 2 else (arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0)))
        if isinstance(image, np.ndarray):
            arr = image[:, :, 0] if image.ndim == 3 and image.shape[-1] == 1 else image
            image = Image.fromarray(to_uint8(arr))
        image = to_8bit(image).convert("L" if self.channels == 1 else "RGB")
        b = self.base_size
        w, h = image.size
        self._check_as_is(h, w)
        if self.fit == "pad" and w <= b and h <= b:
            canvas = Image.new(image.mode, (b, b))
            canvas.paste(image, ((b - w) // 2, (b - h) // 2))
            image = canvas
        else:
            s = b / min(w, h)
            nw, nh = max(b, round(w * s)), max(b, round(h * s))
            image = image.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - b) // 2, (nh - b) // 2
            image = image.crop((left, top, left + b, top + b))
        arr = np.array(image, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)
        arr = arr[None] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))
        return torch.from_numpy(np.ascontiguousarray(arr))

    def base_batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """N x H x W (or N x C x H x W) uint8 images of one size -> N x C x B x B base squares, vectorised."""
        x = torch.as_tensor(images)
        if x.dim() == 3:
            x = x[:, None]
        n, c, h, w = x.shape
        b = self.base_size
        self._check_as_is(h, w)
        if c != self.channels:
            x = (
                x.expand(n, self.channels, h, w)
                if c == 1
                else (
                    x.float()
                    .mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))
                    .sum(1, keepdim=True)
                    .round()
                    .clamp(0, 255)
                    .to(torch.uint8)
                )
            )
        if self.fit == "pad" and h <= b and w <= b:
            out = torch.zeros(n, self.channels, b, b, dtype=torch.uint8)
            top, left = (b - h) // 2, (b - w) // 2
            out[:, :, top : top + h, left : left + w] = x
            return out
        return torch.stack([self.base(img) for img in x])

    def _check_as_is(self, h: int, w: int) -> None:
        """`fit="none"` (`--fit none`): the image goes in as it is, so it must have the input size."""
        if self.fit == "none" and (h, w) != (self.base_size, self.base_size):
            raise UsageError(
                f"an image of {w}x{h} px with --fit none (images as they are): the model takes "
                f"{self.base_size}x{self.base_size}; pass --fit resize or --fit paper to resize and crop it"
            )

    # --- batches of base squares -> model input --------------------------------------------------------
    def mean_at(self, base_size: int) -> torch.Tensor | None:
        """The mean image carried to another base square by the images' own rule: centred and zero-padded (or
        cut) for "pad", resized with PIL's bilinear filter for "resize" (`base`)."""
        m = self.mean_image
        if m is None or base_size == m.shape[-1]:
            return m
        if self.fit == "pad":
            out = torch.zeros(m.shape[0], base_size, base_size, dtype=m.dtype)
            old = m.shape[-1]
            src, dst = max(0, (old - base_size) // 2), max(0, (base_size - old) // 2)
            n = min(old, base_size)
            out[:, dst : dst + n, dst : dst + n] = m[:, src : src + n, src : src + n]
            return out
        chans = [
            np.asarray(
                Image.fromarray(c.float().numpy(), mode="F").resize((base_size, base_size), Image.Resampling.BILINEAR)
            )
            for c in m
        ]
        return torch.from_numpy(np.stack(chans)).to(m.dtype)

    def normalize(self, base: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x B x B -> float: minus the mean image, in `scale` units (or per-channel mean/std); a
        float64 base stays float64."""
        x = base if base.dtype == torch.float64 else base.float()
        if self.mean_image is not None:
            x = x - self.mean_image.to(x.device)
        if self.scale != 255.0:
            x = x * (self.scale / 255.0)
        if self.channel_mean is not None:
            mean, std = self._channel_stats(x.device)
            x = (x - mean) / std
        return x

    def _channel_stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.channel_mean, device=device).view(1, -1, 1, 1) * self.scale
        std = torch.tensor(self.channel_std or (1.0,) * len(self.channel_mean or ()), device=device)
        return mean, std.view(1, -1, 1, 1) * self.scale

    @property
    def center_offset(self) -> int:
        return (self.base_size - self.input_size) // 2

    def crop(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image crops: x N x C x B x B, offsets N x 2 (top, left), flips N bools -> N x C x S x S."""
        s, n, dev = self.input_size, x.shape[0], x.device
        offsets = offsets.to(dev)
        rows = offsets[:, 0].view(n, 1) + torch.arange(s, device=dev).view(1, s)  # N x S
        cols = offsets[:, 1].view(n, 1) + torch.arange(s, device=dev).view(1, s)
        if flips is not None:
            cols = torch.where(flips.to(dev).view(n, 1).bool(), cols.flip(1), cols)
        idx_n = torch.arange(n, device=dev).view(n, 1, 1)
        out = x.permute(0, 2, 3, 1)[idx_n, rows.view(n, s, 1), cols.view(n, 1, s)]  # N x S x S x C
        return out.permute(0, 3, 1, 2).contiguous()

    def center(self, base: torch.Tensor) -> torch.Tensor:
        """Centre crops of a uint8 or float base batch (no normalization)."""
        o, s = self.center_offset, self.input_size
        return base[:, :, o : o + s, o : o + s]

    def train_input(self, base: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Sec. 3 training input: mean-subtracted random crops with horizontal flips."""
        return self.crop(self.normalize(base), offsets, flips)

    def eval_input(self, base: torch.Tensor) -> torch.Tensor:
        """Single centre crop, mean-subtracted."""
        return self.center(self.normalize(base)).contiguous()

    def ten_crop_input(self, base: torch.Tensor) -> torch.Tensor:
        """Sec. 3's 10 crops: 4 corners + centre, with and without flip -> (10*N) x C x S x S, crop-major."""
        # torchvision's ten_crop gives the same ten crops, but its flipped five are the crops of the flipped
        # image (mirrored corners first), so crop i + 5 would not be crop i flipped; kept as written here
        x = self.normalize(base)
        b, s = self.base_size, self.input_size
        tops = [0, 0, b - s, b - s, self.center_offset]
        lefts = [0, b - s, 0, b - s, self.center_offset]
        crops = [x[:, :, t : t + s, l : l + s] for t, l in zip(tops, lefts)]
        crops += [c.flip(-1) for c in crops]
        return torch.cat(crops).contiguous()

    def display(self, model_input: torch.Tensor) -> torch.Tensor:
        """Invert `normalize` on model input (N x C x S x S) -> uint8-range float pixels, for showing patches."""
        return self.to_pixels(model_input).clamp(0, 255)

    # --- pixel space: the image as the camera gave it (0-255 per channel), before any mean or scale -----------
    @property
    def grey(self) -> tuple[float, ...]:
        """Sec. 4.2's grey in 8-bit pixel values per channel: the training set's mean pixel (the channel means of
        the mean image over the centre crop the model sees - for padded digits the images' own mean, not diluted
        by the padding - or the channel mean x 255), rounded to whole values so that it is a pixel an image can
        hold; mid-grey 128 when the preprocessing subtracts no mean."""
        if self.mean_image is not None:
            crop = self.center(self.mean_image[None])[0]
            return tuple(float(round(float(v))) for v in crop.double().mean((1, 2)))
        if self.normalises_by_mean:
            assert self.channel_mean is not None
            return tuple(float(round(v * 255.0)) for v in self.channel_mean)
        if self.data_grey is not None:
            return tuple(float(round(v)) for v in self.data_grey)
        return (128.0,) * self.channels

    @property
    def normalises_by_mean(self) -> bool:
        """A channel normalisation whose mean is a pixel (above 0): a mean of 0 says nothing of the data."""
        return self.channel_mean is not None and any(v > 0 for v in self.channel_mean)

    @property
    def knows_grey(self) -> bool:
        """The grey follows from the preprocessing itself: a mean image, or a normalisation mean above 0."""
        return self.mean_image is not None or self.normalises_by_mean

    @property
    def grey_source(self) -> str:
        """Where `grey` comes from, for results and captions (issue 40: never black because a mean is 0)."""
        if self.mean_image is not None:
            return "the training mean pixel (the mean image's)"
        if self.normalises_by_mean:
            return "the normalisation's mean pixel"
        if self.data_grey is not None:
            return "the mean pixel of the data given (--data)"
        why = "the normalisation's mean is 0" if self.channel_mean is not None else "no mean is known"
        return f"mid-grey 128: {why} and no data was given"

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float pixel values (N x C x S x S or C x S x S, 0-255) of the centre crop -> model input: the same
        arithmetic as `eval_input` on a base square holding them (the mean image's centre crop subtracted)."""
        x = pixels.float()
        if self.mean_image is not None:
            mean = self.center(self.mean_image[None])[0].to(x.device)
            if mean.shape[-2:] != x.shape[-2:]:
                raise UsageError(
                    f"images of {tuple(x.shape[-2:])} px do not fit the {self.input_size} px mean image's crop; "
                    "preprocess them with this model's preprocessing"
                )
            x = x - mean
        if self.scale != 255.0:
            x = x * (self.scale / 255.0)
        if self.channel_mean is not None:
            mean, std = self._channel_stats(x.device)
            x = (x - mean[0]) / std[0] if x.dim() == 3 else (x - mean) / std
        return x

    def to_pixels(self, model_input: torch.Tensor) -> torch.Tensor:
        """Inverse of `from_pixels` (N x C x S x S), unclipped: the pixels a model input was made from."""
        x = model_input
        if self.channel_mean is not None:
            mean, std = self._channel_stats(x.device)
            x = x * std + mean
        x = x * (255.0 / self.scale)
        if self.mean_image is not None:
            x = x + self.center(self.mean_image[None].to(x.device))
        return x

    def to_dict(self) -> dict:
        return {
            "input_size": self.input_size,
            "base_size": self.base_size,
            "channels": self.channels,
            "fit": self.fit,
            "scale": self.scale,
            "mean": "image" if self.mean_image is not None else None,
            "channel_mean": self.channel_mean,
            "channel_std": self.channel_std,
            **({"data_grey": list(self.data_grey)} if self.data_grey is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, mean_image: torch.Tensor | None = None) -> Preprocess:
        """Inverse of `to_dict` (the mean image travels as a tensor beside it)."""
        pp = cls(
            int(d["input_size"]),
            int(d["base_size"]),
            int(d["channels"]),
            d.get("fit"),
            float(d.get("scale", 255.0)),
            None,
            tuple(d["channel_mean"]) if d.get("channel_mean") else None,
            tuple(d["channel_std"]) if d.get("channel_std") else None,
            tuple(float(v) for v in d["data_grey"]) if d.get("data_grey") else None,
        )
        return pp.with_mean(mean_image) if mean_image is not None else pp


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """An image array -> uint8: uint16 / 257; wider integers / 257 when they exceed 255; floats in [0, 1]
    x 255 (floats beyond that are taken as 8-bit values); then rounded and clipped to [0, 255]."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = np.nan_to_num(arr.astype(np.float64))
    if arr.dtype == np.uint16 or (np.issubdtype(arr.dtype, np.integer) and a.max(initial=0) > 255):
        a = a / 257.0
    elif np.issubdtype(arr.dtype, np.floating) and a.max(initial=0) <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_8bit(image: Image.Image) -> Image.Image:
    """PIL modes beyond 8 bits per channel (I;16*, I, F) -> mode L on the 8-bit scale (`to_uint8`); palette,
    RGBA, CMYK, LA and 1-bit images are left to PIL's `convert`."""
    if image.mode.startswith("I;16"):
        return Image.fromarray(to_uint8(np.array(image).astype(np.uint16)))
    if image.mode in ("I", "F"):
        return Image.fromarray(to_uint8(np.array(image)))
    return image


def for_model(input_size: int, channels: int, fit: str | None = None, scale: float = 255.0) -> Preprocess:
    """The Sec. 3 preprocessing for a model taking `input_size` px: base square = input * 256/224."""
    return Preprocess(input_size, round(input_size * 256 / 224), channels, fit, scale)
