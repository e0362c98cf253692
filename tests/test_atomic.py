"""proteinperf.atomic: an output appears complete or not at all."""

import pytest

from proteinperf.atomic import atomic_output, write_text_atomic
from proteinperf.errors import InputError


def test_failed_block_leaves_nothing_and_keeps_the_old_file(tmp_path):
    out = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_output(out, fsync=True) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_directory_is_replaced_only_when_complete(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old.json").write_text("{}")
    with pytest.raises(KeyError), atomic_output(out, directory=True) as tmp:
        (tmp / "new.json").write_text("{}")
        raise KeyError
    assert [p.name for p in out.iterdir()] == ["old.json"]
    with atomic_output(out, directory=True) as tmp:
        (tmp / "new.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["new.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    with pytest.raises(InputError, match="is a directory"), atomic_output(out):
        pass


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path):
    import errno

    from proteinperf.cli import error_line

    out = tmp_path / "e.npz"
    with pytest.raises(OSError) as info, atomic_output(out) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")  # as os.write raises it
    assert info.value.filename == str(out) and info.value.errno == errno.ENOSPC
    assert error_line(info.value) == f"{out}: No space left on device"
    assert list(tmp_path.iterdir()) == []
    # An error that already names its file keeps that name.
    with pytest.raises(OSError) as info, atomic_output(out):
        open(tmp_path / "missing" / "x")
    assert info.value.filename == str(tmp_path / "missing" / "x")


def test_free_space_is_checked_before_writing(tmp_path, monkeypatch):
    import shutil

    from proteinperf.atomic import check_free_space

    free = shutil.disk_usage(tmp_path).free
    check_free_space(tmp_path / "out.h5", 1)
    with pytest.raises(OSError, match=r"No space left on device: it needs about .* MB free; x"):
        check_free_space(tmp_path / "new" / "out.h5", free + 2**30, then="; x")
