"""Overlap removal (Sec. 5.2, footnote): find the images of set B that also occur in set A - resized, re-encoded
or lightly cropped - by normalized correlation of small downsampled copies, as the paper did for Caltech and
ImageNet, so that the overlapping A images can be left out of training.

Descriptor: each image's base square (the Sec. 3 square, so aspect and size no longer matter) turned grey,
area-averaged to `size` x `size` (16), mean removed and scaled to unit length; the normalized correlation of two
images is the dot product of their descriptors (1 = identical up to brightness and contrast). A flat image has no
descriptor direction and never matches.

Streaming and blocked: B's descriptors stay in memory (30,000 x 256 floats = 31 MB); A is read in blocks, each
block's correlations with all of B are one matrix product, and a running top-k per B image keeps its `k` best A
matches (ties to the lower A index) - memory does not grow with A.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import data as zdata


def descriptors(bases: torch.Tensor, size: int = 16) -> torch.Tensor:
    """uint8 base squares (N x C x B x B) -> N x size^2 unit vectors (mean removed; zero for flat images)."""
    x = bases.float()
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    x = F.adaptive_avg_pool2d(x, size).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)


def dataset_descriptors(
    ds: zdata.ImageSet,
    size: int = 16,
    batch_size: int = 1024,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "descriptors",
):
    """(N x size^2 descriptors, the dataset indices they belong to) - unreadable files are skipped."""
    out, idx = [], []
    for bases, _, i in zdata.batches(
        ds, zdata.chunked(range(len(ds)), batch_size), workers=workers, progress=progress, desc=desc
    ):
        out.append(descriptors(bases.to(device), size))
        idx.append(i)
    return torch.cat(out), torch.cat(idx)


@dataclass
class Matches:
    """For every B image, its k best A images: scores (k x N_b, -inf where none) and A indices (k x N_b)."""

    scores: torch.Tensor
    a_index: torch.Tensor
    b_index: torch.Tensor  # N_b dataset indices of B's readable images
    comparisons: int
    compare_seconds: float

    def pairs(self, threshold: float) -> list[tuple[int, int, float]]:
        """(a index, b index, score) of every kept match at or above `threshold`, best first."""
        hit = self.scores >= threshold
        rows, cols = hit.nonzero(as_tuple=True)
        out = [(int(self.a_index[r, c]), int(self.b_index[c]), float(self.scores[r, c])) for r, c in zip(rows, cols)]
        return sorted(out, key=lambda t: (-t[2], t[1], t[0]))


def _block_best(s: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the columns of the k largest values, ties to the lower column (torch.topk leaves the order of
    ties unspecified): everything above the k-th value, then the first of those equal to it."""
    kth = s.topk(k, dim=1).values[:, -1:]
    above = s > kth
    tied = s == kth
    need = k - above.sum(1, keepdim=True)
    keep = above | (tied & (tied.cumsum(1) <= need))
    return keep.nonzero()[:, 1].view(s.shape[0], k)


def _best_lower_index(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values per row with their indices, equal values ordered by the lower index."""
    by_index = index.sort(dim=1, stable=True).indices
    v, i = values.gather(1, by_index), index.gather(1, by_index)
    order = v.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return v.gather(1, order), i.gather(1, order)


def match(desc_a_blocks, desc_b: torch.Tensor, b_index: torch.Tensor, k: int = 5) -> Matches:
    """Stream A's (descriptor block, A indices) pairs against all of B, keeping each B image's k best."""
    n_b = desc_b.shape[0]
    scores = torch.full((n_b, k), float("-inf"), device=desc_b.device)  # row-major: each B image's k best
    a_idx = torch.full((n_b, k), -1, dtype=torch.long, device=desc_b.device)
    comparisons, seconds = 0, 0.0
    for block, idx in desc_a_blocks:
        t0 = time.perf_counter()
        s = desc_b @ block.t()  # n_b x n_a normalized correlations
        kk = min(k, s.shape[1])
        cols = _block_best(s, kk)  # the block's best per B image, then merged with the running best
        cand_s = torch.cat([scores, s.gather(1, cols)], 1)
        cand_i = torch.cat([a_idx, idx.to(desc_b.device)[cols]], 1)
        scores, a_idx = _best_lower_index(cand_s, cand_i, k)
        if s.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        comparisons += s.numel()
    return Matches(scores.t().contiguous().cpu(), a_idx.t().contiguous().cpu(), b_index.cpu(), comparisons, seconds)


def dedupe(
    set_a: zdata.ImageSet,
    set_b: zdata.ImageSet,
    size: int = 16,
    k: int = 5,
    block: int = 4096,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Matches:
    """Each B image's k best A matches by normalized correlation (see the module docstring)."""
    desc_b, b_index = dataset_descriptors(set_b, size, block, workers, device, progress, desc="descriptors B")

    def blocks():
        for bases, _, i in zdata.batches(
            set_a, zdata.chunked(range(len(set_a)), block), workers=workers, progress=progress, desc="compare A"
        ):
            yield descriptors(bases.to(device), size), i

    return match(blocks(), desc_b, b_index, k)
