"""Unit matching between two models (issue 39): Li et al., "Convergent Learning: Do Different Neural Networks Learn
the Same Representations?" (ICLR 2016), Sec. 3: units of a layer in model A and model B are paired by the Pearson
correlation of their activations over the same images, with the one-to-one assignment that maximizes the summed
correlation (the Hungarian method, `scipy.optimize.linear_sum_assignment`). Here each unit's activation on an image
is its map's maximum (the atlas's value, Fig. 2), so Fig. 4's question - is this the same feature as before? - is
asked of features, not of unit numbers. Layers of different widths match min(Ca, Cb) pairs; a pair below the
threshold is no match: A's unit is "gone", B's is "new".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of `a` (N x Ca) with every column of `b` (N x Cb), in float64; a
    constant column (a unit that never varies) correlates 0 with everything."""
    if a.shape[0] != b.shape[0]:
        raise UsageError(f"the two sides have {a.shape[0]} and {b.shape[0]} images; match over the same images")
    if a.shape[0] < 2:
        raise UsageError("matching units needs at least 2 images")
    a, b = a.astype(np.float64), b.astype(np.float64)
    a, b = a - a.mean(0), b - b.mean(0)
    na, nb = np.sqrt((a * a).sum(0)), np.sqrt((b * b).sum(0))
    c = (a.T @ b) / np.maximum(np.outer(na, nb), 1e-300)
    c[na == 0, :] = 0.0
    c[:, nb == 0] = 0.0
    return np.clip(c, -1.0, 1.0)


@dataclass
class Matching:
    """One layer's pairs: A's unit `a[i]` is B's unit `b[i]` with correlation `r[i]` (sorted by r, strongest first);
    `gone` (A's units with no partner at `threshold` or above) and `new` (B's)."""

    a: list[int]
    b: list[int]
    r: list[float]
    gone: list[int]
    new: list[int]
    threshold: float
    widths: tuple[int, int]

    def to_json(self) -> dict:
        return {"pairs": [{"a": a, "b": b, "r": r} for a, b, r in zip(self.a, self.b, self.r)], "gone": self.gone,
                "new": self.new, "threshold": self.threshold, "widths": list(self.widths),
                "matched": len(self.a)}  # fmt: skip


def match_units(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> Matching:
    """The one-to-one assignment of A's units (columns of `a`) to B's (columns of `b`) maximizing the summed
    correlation; pairs below `threshold` are dropped (their units gone / new)."""
    from scipy.optimize import linear_sum_assignment

    c = correlations(a, b)
    rows, cols = linear_sum_assignment(c, maximize=True)
    keep = [(int(i), int(j), float(c[i, j])) for i, j in zip(rows, cols) if c[i, j] >= threshold]
    keep.sort(key=lambda t: (-t[2], t[0]))
    matched_a, matched_b = {i for i, _, _ in keep}, {j for _, j, _ in keep}
    return Matching(
        [i for i, _, _ in keep],
        [j for _, j, _ in keep],
        [r for _, _, r in keep],
        [i for i in range(c.shape[0]) if i not in matched_a],
        [j for j in range(c.shape[1]) if j not in matched_b],
        threshold,
        (c.shape[0], c.shape[1]),
    )


__all__ = ["Matching", "correlations", "match_units"]
