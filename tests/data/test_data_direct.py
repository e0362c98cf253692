import errno
import os

import numpy as np
import pytest

from proteinperf.data import direct
from proteinperf.data.direct import ALIGN, AppendFile

# Pieces of awkward sizes: empty, one byte, exactly a block, across the staging buffer's end
# (chunk = 2 blocks), larger than the buffer, and a tail that is not a whole block.
PIECES = [0, 1, ALIGN - 1, ALIGN, 3 * ALIGN + 5, 1, 2 * ALIGN, 17, 5 * ALIGN - 3]


def _pieces(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8) for n in PIECES]


@pytest.mark.parametrize("use_direct", [True, False])
@pytest.mark.parametrize("chunk", [ALIGN, 2 * ALIGN, 3 * ALIGN + 1, 1 << 20])
def test_bytes_equal_whatever_the_route(tmp_path, use_direct, chunk):
    pieces = _pieces()
    path = tmp_path / "out.bin"
    with AppendFile(path, direct=use_direct, chunk=chunk) as f:
        for p in pieces:
            f.write(p)
    expected = np.concatenate(pieces).tobytes()
    assert path.read_bytes() == expected
    assert f.size == len(expected)
    assert f.direct == (use_direct and f.direct)  # may be False where O_DIRECT is refused


def test_takes_any_contiguous_buffer(tmp_path):
    ints = np.arange(1000, dtype=np.int64)
    with AppendFile(tmp_path / "x.bin", chunk=ALIGN) as f:
        f.write(ints)
        f.write(b"tail")
        f.write(memoryview(bytearray(b"ab")))
    assert (tmp_path / "x.bin").read_bytes() == ints.tobytes() + b"tailab"


def test_filesystem_without_o_direct_falls_back_at_open(tmp_path, monkeypatch):
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this OS")
    real_open = os.open

    def refusing_open(path, flags, *a):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(direct.os, "open", refusing_open)
    pieces = _pieces(1)
    with AppendFile(tmp_path / "b.bin", chunk=ALIGN) as f:
        assert not f.direct
        for p in pieces:
            f.write(p)
    assert (tmp_path / "b.bin").read_bytes() == np.concatenate(pieces).tobytes()


def test_direct_write_refused_midway_falls_back_without_losing_bytes(tmp_path, monkeypatch):
    f = AppendFile(tmp_path / "c.bin", chunk=ALIGN)
    if not f.direct:
        f.close()
        pytest.skip("this filesystem refuses O_DIRECT at open")
    real_write = os.write
    calls = []

    def write_refused_once_direct(fd, data):
        calls.append(len(data))
        if len(calls) == 2:  # the second direct write: e.g. a stricter alignment rule
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "write", write_refused_once_direct)
    pieces = _pieces(2)
    with f:
        for p in pieces:
            f.write(p)
    assert not f.direct
    assert (tmp_path / "c.bin").read_bytes() == np.concatenate(pieces).tobytes()


def test_other_write_errors_are_not_swallowed(tmp_path, monkeypatch):
    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    f = AppendFile(tmp_path / "d.bin", chunk=ALIGN)
    monkeypatch.setattr(direct.os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        f.write(np.zeros(2 * ALIGN, np.uint8))
        f.close()
    f.close()  # closing twice is harmless


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_tmpfs(tmp_path):
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        pieces = _pieces(3)
        with AppendFile(os.path.join(d, "e.bin"), chunk=ALIGN) as f:
            for p in pieces:
                f.write(p)
        with open(os.path.join(d, "e.bin"), "rb") as g:
            assert g.read() == np.concatenate(pieces).tobytes()
