"""Atomic outputs: a file or directory appears complete under its name, or not at all.

Everything that writes a result (checkpoints, embeddings, scores, reports, run records) goes
through ``atomic_output``: write into a temporary path beside the target (same file system, so
the final ``os.replace`` is atomic), renamed into place only if the block succeeds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from proteinperf.errors import InputError


def check_target(path, directory: bool = False) -> None:
    """InputError if ``path`` exists as the other kind (a folder where a file goes, or the
    reverse). Commands call it before their work too, so a long run does not fail only at the
    final rename."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        kind = "a directory" if path.is_dir() else "a file"
        raise InputError(f"output {path} exists and is {kind}")


@contextlib.contextmanager
def atomic_output(path, directory: bool = False, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    An interrupted or failed run leaves nothing that looks like a finished output. For a
    directory, an existing ``path`` is replaced only after the new one is complete. ``fsync``
    flushes a file to disk before the rename (a crash then leaves the old or the new file).
    """
    path = Path(path)
    check_target(path, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path)
    prefix = f".{path.name}.tmp-{_owner()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent)) if directory else None
    if tmp is None:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        with naming_errors(path):
            yield tmp
        os.chmod(tmp, _default_mode(directory))  # mkstemp/mkdtemp make them private
        if fsync and not directory:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if directory and path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{_owner()}-", dir=path.parent))
            os.replace(path, old / "out")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _host() -> str:
    """This host's name as it appears in temporary names (a safe subset of characters)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _owner() -> str:
    """``host.pid``: who made a temporary path, so a later run can tell a dead one's leftovers."""
    return f"{_host()}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(path, report: bool = True) -> list[Path]:
    """Remove the temporaries that runs killed beside ``path`` left behind (SIGKILL, power
    loss: no ``except`` ran). One made on this host by a process that no longer exists is
    removed; one of another host, or of an older version that did not record its owner, is
    named on stderr (``report``) and kept (it may belong to a live run elsewhere). Returns what was
    removed."""
    path = Path(path)
    mine = re.escape(_host())
    owned = re.compile(rf"\.{re.escape(path.name)}\.(?:tmp|old)-{mine}\.(\d+)-.+")
    unowned = re.compile(rf"\.{re.escape(path.name)}\.(?:tmp|old)-.+")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for leftover in siblings:
        match = owned.fullmatch(leftover.name)
        if match and not _alive(int(match.group(1))):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
        elif not match and unowned.fullmatch(leftover.name) and report:
            print(
                f"note: {leftover} looks like what an interrupted run left; delete it if no "
                "run is writing it",
                file=sys.stderr,
            )
    return removed


@contextlib.contextmanager
def naming_errors(path) -> Iterator[None]:
    """An OSError without a file name (a write that found the disk full, a failed flush) is
    raised again naming ``path``: the CLI's one line then says which output could not be
    written."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        text = str(err).strip().splitlines()
        reason = os.strerror(err.errno) if err.errno else (text[0] if text else "write failed")
        raise OSError(err.errno, reason, str(path)) from err


def check_free_space(path, needed: int, then: str = "") -> None:
    """OSError (ENOSPC, naming ``path``; ``then`` appended to its reason) when the file system
    ``path`` goes to has fewer than ``needed`` bytes free: refused before writing, not after
    filling the disk."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)}: it needs about {_mb(needed)}, {_mb(free)} free{then}",
            str(path),
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def write_text_atomic(path, text: str) -> Path:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _default_mode(directory: bool) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


__all__ = [
    "atomic_output",
    "check_free_space",
    "naming_errors",
    "sweep_leftovers",
    "write_text_atomic",
]
