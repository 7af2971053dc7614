import os
import stat

import pytest

from fsd._io import atomic_write, atomic_write_bytes, prepare_output_folder
from fsd.errors import InputError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_get_ordinary_permissions(tmp_path, umask_022):
    target = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_output_folder_refuses_files_unless_overwrite(tmp_path):
    folder = tmp_path / "out"
    prepare_output_folder(folder, overwrite=False)
    (folder / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match="already holds files"):
        prepare_output_folder(folder, overwrite=False)
    prepare_output_folder(folder, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        prepare_output_folder(tmp_path / "file", overwrite=True)
