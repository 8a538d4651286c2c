import os
import stat

import pytest

from pipeline.files import atomic_path, write_json


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text().strip().startswith("{") and '"version": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_written_files_get_ordinary_permissions_and_keep_their_suffix(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "labels.nii.gz") as tmp:
            assert tmp.name.endswith(".nii.gz")
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "labels.nii.gz").stat().st_mode) == 0o644
