"""Atomic writes: an error mid-write leaves the earlier file as it was, and results get normal permissions."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from zfnet.io import atomic_path, atomic_save_tensors, atomic_write_json, load_tensors


def test_failed_write_keeps_the_old_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write('{"a": ')  # half written
        raise RuntimeError("killed")
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert os.listdir(tmp_path) == ["result.json"]


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save_tensors({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "w.safetensors").st_mode) == 0o644
    assert torch.equal(load_tensors(tmp_path / "w.safetensors")["w"], torch.ones(2))
