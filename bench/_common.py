"""What every benchmark prints and saves beside its figures: threads, torch version, the exact command."""

from __future__ import annotations

import json
import sys

import torch


def finish(result: dict, path: str | None) -> int:
    result.update(threads=torch.get_num_threads(), torch=torch.__version__, command=" ".join(["python", *sys.argv]))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    return 0
