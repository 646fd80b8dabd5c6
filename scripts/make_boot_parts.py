"""Write zfnet/pretrained/fashion_mnist/parts-ankle-boot.json: toe, heel and shaft-opening boxes on the first 12
ankle boots of the Fashion-MNIST test set, for `zfnet correspondence` (arXiv "Correspondence Analysis").

Every boot in Fashion-MNIST points left, sole down. Each box (6 x 6 px of the 28 px image = the model input, since
the embedded model pads 28 to 32 and crops the centre 28) is placed by a rule on that boot's own silhouette
(pixels > 20), so a part sits where it is in each image: toe = the bottom-left corner of the silhouette's
bounding box, heel = the bottom-right corner, shaft opening = centred on the topmost silhouette pixels. The
"object" box is the silhouette's bounding box: where the random parts of the control are placed.
The boxes are drawn on the images in the command's figure (correspondence.png), where they were checked by eye.

    python scripts/make_boot_parts.py
"""

from __future__ import annotations

import json
import os

import numpy as np

from zfnet.data.idx import read_idx
from zfnet.data.mnist import find_fashion_mnist

SIDE = 6
N = 12
DEST = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "zfnet",
    "pretrained",
    "fashion_mnist",
    "parts-ankle-boot.json",
)


def object_box(img: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(img > 20)
    return [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1]


def boxes(img: np.ndarray) -> dict[str, list[int]]:
    ys, xs = np.nonzero(img > 20)
    r0, r1, c0, c1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    top = xs[ys <= r0 + 1]
    cx = int(round(float(top.mean())))

    def box(y0: int, x0: int) -> list[int]:
        y0 = min(max(y0, 0), 28 - SIDE)
        x0 = min(max(x0, 0), 28 - SIDE)
        return [y0, x0, y0 + SIDE, x0 + SIDE]

    return {
        "toe": box(r1 + 1 - SIDE, c0),
        "heel": box(r1 + 1 - SIDE, c1 + 1 - SIDE),
        "shaft opening": box(r0, cx - SIDE // 2),
    }


def main() -> None:
    files = find_fashion_mnist()
    x, y = read_idx(files["test_x"]), read_idx(files["test_y"])
    idx = [int(i) for i in np.nonzero(y == 9)[0][:N]]
    per = [boxes(x[i]) for i in idx]
    out = {
        "data": "fashion-mnist",
        "split": "test",
        "images": idx,
        "class": "Ankle boot",
        "box": "y0, x0, y1, x1 in model-input pixels, end-exclusive",
        "rule": "placed on each boot's silhouette by scripts/make_boot_parts.py",
        "parts": {p: [b[p] for b in per] for p in ("toe", "heel", "shaft opening")},
        "object": [object_box(x[i]) for i in idx],
    }
    with open(DEST, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(DEST, idx)


if __name__ == "__main__":
    main()
