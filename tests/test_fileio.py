import json
import os

import numpy as np
import pytest

from pss_keras import fileio


def test_atomic_write_replaces_whole_files_with_open_s_permissions(tmp_path):
    path = tmp_path / "sub" / "table.json"
    fileio.atomic_write_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    fileio.atomic_write_text(str(path), "new\n")
    assert path.read_text() == "new\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert os.listdir(path.parent) == ["table.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "stats.npz"
    np.savez(path, x=np.arange(3))
    with pytest.raises(RuntimeError, match="disk full"):
        with fileio.atomic_file(str(path)) as tmp:
            assert tmp.endswith(".npz") and os.path.dirname(tmp) == str(tmp_path)
            np.savez(tmp, x=np.zeros(5))
            raise RuntimeError("disk full")
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["x"], np.arange(3))
    assert os.listdir(tmp_path) == ["stats.npz"]


def test_atomic_file_fsyncs_data_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = tmp_path / "w.weights.h5"
    with fileio.atomic_file(str(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"x")
    assert synced[0].endswith(".weights.h5") and synced[-1] == str(tmp_path)
    assert path.read_bytes() == b"x"
