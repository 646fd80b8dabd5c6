"""Image collections: labelled images that yield uint8 base squares (see `Preprocess`)."""

from __future__ import annotations

import copy
import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import UsageError, note
from .preprocess import Preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ImageSet(torch.utils.data.Dataset):
    """A split of a dataset. `ds[i]` -> (C x B x B uint8 base square, label); `labels` holds every label
    (int64 class index, or a float multi-hot vector for multi-label data such as PASCAL VOC)."""

    name: str
    split: str
    classes: list[str]
    labels: torch.Tensor
    preprocess: Preprocess
    skipped: dict[int, str]  # index -> why the file could not be read (files met so far; see `batches`)
    spec: str | None = None  # the dataset spec it was opened from (`open_dataset`)
    _ids: list[str] | None = None  # image ids kept by `subset` (else each kind names its images)
    exclude: str | None = None  # the exclusion list applied (`open_dataset`)

    def __len__(self) -> int:
        raise NotImplementedError

    def image_id(self, i: int) -> str:
        raise NotImplementedError

    def base(self, i: int) -> torch.Tensor:
        """Image `i`'s C x B x B uint8 base square."""
        raise NotImplementedError

    def in_memory(self) -> torch.Tensor | None:
        """All base squares as one N x C x B x B uint8 tensor, when the set lives in memory (else None)."""
        return None

    def head(self, n: int | None) -> ImageSet:
        """The first `n` images as a set of the same kind (quick runs, tests); None or n >= len: self."""
        if n is None or n >= len(self):
            return self

        sub = copy.copy(self)
        sub.labels = self.labels[:n]
        for attr in ("bases", "files", "_ids"):
            if getattr(self, attr, None) is not None:
                setattr(sub, attr, getattr(self, attr)[:n])
        return sub

    def subset(self, keep) -> ImageSet:
        """The images at indices `keep` (in that order), as a set of the same kind; ids are kept."""

        keep = [int(i) for i in keep]
        sub = copy.copy(self)
        sub._ids = [self.image_id(i) for i in keep]
        sub.labels = self.labels[keep] if keep else self.labels[:0]
        bases, files = getattr(self, "bases", None), getattr(self, "files", None)
        if bases is not None:
            setattr(sub, "bases", bases[keep] if keep else bases[:0])  # noqa: B010 - the in-memory kinds only
        if files is not None:
            setattr(sub, "files", [files[i] for i in keep])  # noqa: B010 - the file kinds only
        sub.skipped = {}
        return sub

    def without(self, ids: set[str]) -> ImageSet:
        """The set less the images whose id is in `ids` (an exclusion list, e.g. from `zfnet dedupe`)."""
        keep = [i for i in range(len(self)) if self.image_id(i) not in ids]
        return self if len(keep) == len(self) else self.subset(keep)

    def skipped_report(self) -> list[dict]:
        """The unreadable files met so far, for a result's provenance: [{image, id, reason}]."""
        return [{"image": i, "id": self.image_id(i), "reason": r} for i, r in sorted(self.skipped.items())]

    def check_readable(self) -> None:
        """After a pass over the set: every file unreadable is an error (one line), some is a note."""

        if not self.skipped:
            return
        first = self.image_id(min(self.skipped))
        if len(self.skipped) >= len(self):
            raise UsageError(
                f"none of the {len(self)} images of {self.name} split {self.split!r} could be read "
                f"(first: {first!r}: {self.skipped[min(self.skipped)]}); check the files"
            )
        note(
            f"skipped {len(self.skipped)} unreadable image(s) of {self.name} split {self.split!r} "
            f"(first: {first!r}); they are listed under 'skipped' in the result"
        )


class TensorImageSet(ImageSet):
    """Images held in memory as an N x H x W (or N x C x H x W) uint8 array (MNIST-style data, synthetic)."""

    def __init__(
        self,
        name: str,
        split: str,
        images: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        preprocess: Preprocess,
        ids: list[str] | None = None,
    ) -> None:
        self.name, self.split, self.classes, self.preprocess = name, split, list(classes), preprocess
        self.bases = preprocess.base_batch(images)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self._ids = ids
        self.skipped = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.bases[i], int(self.labels[i]), None

    def base(self, i: int) -> torch.Tensor:
        return self.bases[i]

    def image_id(self, i: int) -> str:
        return self._ids[i] if self._ids is not None else f"{self.name}/{self.split}/{i:05d}"

    def in_memory(self) -> torch.Tensor:
        return self.bases


class InputSet(TensorImageSet):
    """A batch of model input (N x C x S x S float, already preprocessed) as an image set, so that the methods
    that stream a dataset (atlas, evolution, filters) take a plain batch too. Its preprocessing is the identity:
    patches are shown in input units."""

    def __init__(self, inputs: torch.Tensor, labels=None, classes: list[str] | None = None) -> None:
        if inputs.dim() != 4:
            raise UsageError(f"expected a batch N x C x H x W of model input (got shape {tuple(inputs.shape)})")
        n, c, h, w = inputs.shape
        if h != w:
            raise UsageError(f"expected square model input (got {h}x{w})")
        self.name, self.split = "inputs", "batch"
        self.classes = list(classes or [])
        self.preprocess = Preprocess(h, h, c, "pad", 255.0)
        self.bases = inputs.detach().cpu()
        if not self.bases.is_floating_point():
            self.bases = self.bases.float()
        self.labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self._ids = None
        self.skipped = {}


def as_image_set(images) -> ImageSet:
    """An `ImageSet` as it is; a batch of model input as an `InputSet`."""
    return images if isinstance(images, ImageSet) else InputSet(images)


class FileImageSet(ImageSet):
    """Images read from files on demand (class folders, Caltech, PASCAL VOC)."""

    def __init__(
        self, name: str, split: str, root: str, files: list[str], labels, classes: list[str], preprocess: Preprocess
    ) -> None:
        if not files:
            raise UsageError(
                f"no images found for {name} split {split!r} under {root!r}; check the folder layout "
                "(see the README's data section)"
            )
        self.name, self.split, self.root, self.files = name, split, root, files
        self.classes, self.preprocess = list(classes), preprocess
        self.labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels, dtype=torch.long)
        self.skipped = {}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        """(base square, label, None), or (None, label, reason) for a file that cannot be read."""
        t = self.labels[i]
        label: int | torch.Tensor = int(t) if t.dim() == 0 else t
        try:
            return read_image(os.path.join(self.root, self.files[i]), self.preprocess), label, None
        except UsageError as e:
            return None, label, str(e)

    def base(self, i: int) -> torch.Tensor:
        return read_image(os.path.join(self.root, self.files[i]), self.preprocess)

    def image_id(self, i: int) -> str:
        ids = getattr(self, "_ids", None)
        return ids[i] if ids is not None else self.files[i]


MAX_PIXELS = 100_000_000  # larger images are refused (PIL's decompression-bomb guard, made a clear error)


def _upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: a camera's EXIF orientation (phone photos are stored sideways and
    tagged) applied; a damaged orientation tag is ignored rather than refusing the picture."""
    try:
        return ImageOps.exif_transpose(img) or img.copy()
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        return img.copy()


def open_image(path: str) -> Image.Image:
    """One image file, decoded; an unreadable, truncated or oversized file is a one-line UsageError."""

    if not os.path.isfile(path):
        raise UsageError(f"image {path!r} does not exist; check the path")
    return _decode(path, repr(path))


def decode_image(data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file's bytes (an upload), decoded with the same guards as `open_image` and a pixel cap."""
    return _decode(io.BytesIO(data), repr(name), max_pixels)


def _decode(source, label: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > max_pixels:
                    raise UsageError(
                        f"image {label} has {img.width}x{img.height} pixels, more than zfnet reads "
                        f"({max_pixels:,}); downscale it first"
                    )
                img.load()
                return _upright(img)
    except UsageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UsageError(
            f"image {label} has more pixels than zfnet reads ({max_pixels:,}); downscale it first"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UsageError(f"cannot read image {label} ({reason}); pass a PNG or JPEG file") from None


def read_image(path: str, preprocess: Preprocess) -> torch.Tensor:
    """One image file -> its C x B x B uint8 base square (see `open_image` for what is refused)."""
    return preprocess.base(open_image(path))


def list_images(folder: str) -> list[str]:
    """Image file names in `folder` (not recursive), sorted; hidden files (macOS '._x.png') are left out."""
    return sorted(
        f
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
    )


def class_folders(root: str, skip: tuple[str, ...] = ()) -> tuple[list[str], list[int], list[str]]:
    """ImageNet-style `root/<class>/<image>`: (relative files, labels, class names), classes sorted."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d not in skip)
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in list_images(os.path.join(root, c)):
            files.append(os.path.join(c, f))
            labels.append(k)
    return files, labels, classes
