"""Guards on a command's outputs: never the input itself, never two runs at once.

``check_apart`` refuses an output that is, or resolves to, one of the inputs (a symlink, a
hard link, ``./x`` for ``x``), or a directory output that would swallow an input when it is
replaced. ``OutputLock`` lets one run at a time write an output whose partial state lives on
disk between runs (the shards of a resumable bulk run).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from proteinperf.errors import InputError

PathLike = str | os.PathLike


def _paths(values: Iterable) -> list[Path]:
    """Flatten str / Path / list values, dropping None and empty strings."""
    out: list[Path] = []
    for value in values:
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple)):
            out.extend(_paths(value))
        else:
            out.append(Path(value))
    return out


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _inside(inner: Path, outer: Path) -> bool:
    return outer.resolve() in inner.resolve().parents


def check_apart(inputs: Iterable, outputs: Iterable) -> None:
    """InputError if an output is an input, or an input lies inside an output folder."""
    ins = [p for p in _paths(inputs) if p.exists()]  # model names are not paths
    for out in _paths(outputs):
        for src in ins:
            if _same(out, src):
                raise InputError(
                    f"output {out} is the input {src}: writing it would destroy the input; "
                    "choose another output path"
                )
            if _inside(src, out):
                raise InputError(
                    f"output {out} contains the input {src}: replacing it would delete the "
                    "input; choose another output path"
                )


class OutputBusyError(InputError):
    """Another live process holds the lock on this output."""


@contextlib.contextmanager
def output_lock(output: PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``output`` for the block, or fail at once naming the holder.

    The lock is ``flock`` on ``.<name>.lock`` beside the output; the kernel drops it when the
    process ends however it ends, so a killed run never leaves a stale lock. The file is
    removed on release; a run that opened it just before (and so locked an unlinked inode)
    notices the inode changed and tries again.
    """
    output = Path(output)
    path = output.parent / f".{output.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputBusyError(
                    f"output {output} is being written by another run (pid {holder}, lock "
                    f"{path}): wait for it to finish or stop it first"
                ) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file another run had just removed: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


__all__ = ["OutputBusyError", "check_apart", "output_lock"]
