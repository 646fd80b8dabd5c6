"""Reader for LeCun's IDX format (MNIST, Fashion-MNIST), plain or gzipped."""

from __future__ import annotations

import gzip
import os

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (magic 0x0000TTDD: type TT, DD dimensions, big-endian sizes)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])  # type: ignore[call-overload]
    count = int(np.prod(dims)) if dims else 1
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=4 + 4 * ndim)
    return arr.reshape(dims).copy()  # writable, independent of the file buffer
