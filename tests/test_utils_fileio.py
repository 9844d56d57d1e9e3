import errno
import json
import os
import re

import numpy as np
import pytest
from conftest import _one_line

from pss_keras.utils import fileio


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


@pytest.mark.parametrize("existed", [True, False])
def test_a_full_disk_leaves_the_old_file_and_says_so_in_one_line(tmp_path, disk_full, existed):
    """Issue #14: out of disk space midway through a small atomic write."""
    path = tmp_path / "retained.json"
    if existed:
        fileio.atomic_write_json(str(path), {"old": True})
    failed = disk_full("retained.json", after=5)
    with pytest.raises(fileio.DiskFullError) as caught:
        fileio.atomic_write_json(str(path), {"new": list(range(100))})
    assert failed and os.path.basename(failed[0]).startswith(".retained.json-")
    # A disk-full error is an OSError (errno ENOSPC) and a ValueError, which
    # every script prints as its one "error:" line.
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, ValueError)
    mount = fileio.mount_point(str(tmp_path))
    left = f"{path} is unchanged" if existed else f"{path} was not created"
    assert re.fullmatch(
        rf"Out of disk space writing {re.escape(str(path))} \([\d.,]+ [kMG]B free on "
        rf"{re.escape(mount)}\): free space on {re.escape(mount)} and re-run; {re.escape(left)}\.",
        _one_line(caught.value),
    )
    assert os.listdir(tmp_path) == (["retained.json"] if existed else [])  # no temporary
    if existed:
        assert json.loads(path.read_text()) == {"old": True}


def test_disk_full_errors_are_recognized_from_python_h5py_and_tensorflow(tmp_path):
    import tensorflow as tf

    tf_error = tf.errors.ResourceExhaustedError(None, None, "/x/part-0; No space left on device")
    assert fileio.disk_full_errno(tf_error) == errno.ENOSPC
    assert fileio.disk_full_errno(OSError(errno.EDQUOT, "Disk quota exceeded")) == errno.EDQUOT
    assert fileio.disk_full_errno(OSError(errno.EACCES, "Permission denied")) is None
    assert fileio.disk_full_errno(tf.errors.ResourceExhaustedError(None, None, "OOM")) is None
    with pytest.raises(fileio.DiskFullError, match=r"^Out of disk quota writing .*: delete files "
                       r"to get under your quota on .* and re-run; kept\.$") as caught:  # fmt: skip
        with fileio.disk_full_guard(str(tmp_path / "x"), "kept"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert caught.value.errno == errno.EDQUOT
    with pytest.raises(OSError, match="Permission denied"):  # other errors pass unchanged
        with fileio.disk_full_guard(str(tmp_path / "x"), "kept"):
            raise OSError(errno.EACCES, "Permission denied")
    # The mount named is the one of the file that failed (the TFLite
    # converter's SavedModel goes to the system's temporary folder).
    elsewhere = "/proc/gone/saved_model/variables.data-00000-of-00001.tempstate1"
    assert fileio.failed_path(OSError(errno.ENOSPC, "No space", "/a/b")) == "/a/b"
    assert fileio.failed_path(tf_error) == "/x/part-0"
    with pytest.raises(fileio.DiskFullError, match=r" free on /proc\): free space on /proc and"):
        with fileio.disk_full_guard(str(tmp_path / "x"), "kept"):
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{elsewhere}; No space left on device"
            )
