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


def _direct_file(path, chunk):
    f = AppendFile(path, chunk=chunk)
    if not f.direct:
        f.close()
        pytest.skip("this filesystem refuses O_DIRECT at open")
    return f


def _refuse_call(monkeypatch, n, first_short=False):
    """os.write refuses its n-th call with EINVAL; with first_short the first call writes
    only one block (a short write)."""
    real_write = os.write
    calls = []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) == n:
            raise OSError(errno.EINVAL, "Invalid argument")
        if first_short and len(calls) == 1:
            return real_write(fd, data[:ALIGN])
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "write", write)


@pytest.mark.parametrize("refuse_at", [1, 2, 3])
def test_refused_inside_a_write_keeps_the_order(tmp_path, monkeypatch, refuse_at):
    """The first flush usually happens inside a write() call: after a refusal there, the rest
    of that call and every later call must follow the staged bytes, not overtake them."""
    f = _direct_file(tmp_path / "o.bin", ALIGN)
    _refuse_call(monkeypatch, refuse_at)
    pieces = [b"a", b"b" * (3 * ALIGN + 10), b"XYZ", b"c" * (ALIGN + 1), b"tail", *_pieces(2)]
    with f:
        for p in pieces:
            f.write(p)
    assert not f.direct
    assert (tmp_path / "o.bin").read_bytes() == b"".join(bytes(p) for p in pieces)


def test_short_direct_write_then_refusal_writes_no_byte_twice(tmp_path, monkeypatch):
    f = _direct_file(tmp_path / "s.bin", 2 * ALIGN)
    _refuse_call(monkeypatch, 2, first_short=True)  # half the chunk goes, then the rest refused
    data = np.arange(5 * ALIGN, dtype=np.int64).view(np.uint8)[: 5 * ALIGN]
    with f:
        f.write(data)
    assert (tmp_path / "s.bin").read_bytes() == data.tobytes()


def _descriptors_open_on(path):
    """The descriptors of this process that point at `path` (other fds may come and go)."""
    target = os.path.realpath(path)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                found.append(int(name))
        except OSError:  # closed meanwhile (the listing's own descriptor, another thread's)
            pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_dropped_without_close_frees_its_descriptor(tmp_path):
    import gc

    path = tmp_path / "d.bin"
    f = AppendFile(path)
    f.write(b"x")
    assert _descriptors_open_on(path) == [f.fd]
    del f
    gc.collect()
    assert _descriptors_open_on(path) == []
