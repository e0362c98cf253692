"""How the ranks of a bulk run learn that one of them failed, without waiting on a collective.

Every rank of an attempt keeps a heartbeat file in the shard folder fresh from a background
thread; a rank that raises writes its error there. Between batches, and while rank 0 waits for
the others to finish, a rank looks at the folder: another rank's error, or a heartbeat that has
not moved for ``DEAD_AFTER_S`` (a rank killed outright, by the OOM killer say), stops it at once
with that error instead of at the 30-minute collective timeout. A heartbeat is judged by whether
its modification time changes, by this rank's clock, so clocks of other nodes do not matter.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from proteinperf.atomic import write_text_atomic

HEARTBEAT_S = 2.0
DEAD_AFTER_S = 60.0
CHECK_EVERY_S = 0.5
ATTEMPT_FILE = "attempt"


class PeerFailed(RuntimeError):
    """Another rank of this run failed; its error is the message."""


class Peers:
    """This rank's view of the other ranks of one attempt (``attempt``: a token of rank 0's)."""

    def __init__(
        self,
        folder: Path,
        attempt: str,
        rank: int,
        world: int,
        dead_after_s: float = DEAD_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self.folder, self.attempt, self.rank, self.world = Path(folder), attempt, rank, world
        self.dead_after_s, self.heartbeat_s = dead_after_s, heartbeat_s
        self._seen: dict[int, tuple[float | None, float]] = {}  # rank -> (mtime, seen at)
        self._last_check = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, kind: str, rank: int) -> Path:
        return self.folder / f"{kind}-{self.attempt}-r{rank:04d}"

    # ------------------------------------------------------------------ this rank

    def start(self) -> None:
        self._path("alive", self.rank).touch()
        started = time.monotonic()
        self._seen = {r: (None, started) for r in range(self.world) if r != self.rank}
        self._thread = threading.Thread(target=self._beat, daemon=True, name="bulk-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        path = self._path("alive", self.rank)
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(path)
            except OSError:
                return  # the folder is gone: rank 0 merged and removed it

    def stop(self) -> None:
        self._stop.set()

    def fail(self, error: BaseException) -> None:
        """Tell the others (a PeerFailed is not passed on: its origin has told them)."""
        self.stop()
        if isinstance(error, PeerFailed) or not self.folder.is_dir():
            return
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        write_text_atomic(self._path("error", self.rank), f"rank {self.rank} failed: {message}")

    def finish(self, stats: list[float]) -> None:
        write_text_atomic(self._path("finished", self.rank), json.dumps(stats))

    # ------------------------------------------------------------------ the others

    def check(self, force: bool = False) -> None:
        """Raise PeerFailed if another rank has failed or stopped beating (throttled)."""
        now = time.monotonic()
        if not force and now - self._last_check < CHECK_EVERY_S:
            return
        self._last_check = now
        for error in sorted(self.folder.glob(f"error-{self.attempt}-r*")):
            raise PeerFailed(error.read_text().strip())
        for rank, (mtime, seen) in self._seen.items():
            if self._path("finished", rank).exists():
                continue
            try:
                current = self._path("alive", rank).stat().st_mtime
            except FileNotFoundError:
                current = None
            if current != mtime:
                self._seen[rank] = (current, now)
            elif now - seen > self.dead_after_s:
                raise PeerFailed(
                    f"rank {rank} stopped without an error (no heartbeat for "
                    f"{self.dead_after_s:g} s: killed, or its node lost?)"
                )

    def wait_all(self, poll_s: float = 0.1) -> list[list[float]]:
        """Rank 0: every rank's stats once all have finished; PeerFailed as soon as one fails."""
        while True:
            self.check(force=True)
            paths = [self._path("finished", r) for r in range(self.world)]
            if all(p.exists() for p in paths):
                return [json.loads(p.read_text()) for p in paths]
            time.sleep(poll_s)


def new_attempt(folder: Path) -> str:
    """Rank 0: a fresh token for this attempt, written for the other ranks; the markers of
    earlier attempts are removed."""
    for kind in ("alive", "error", "finished"):
        for old in folder.glob(f"{kind}-*"):
            old.unlink(missing_ok=True)
    token = os.urandom(6).hex()
    write_text_atomic(folder / ATTEMPT_FILE, token)
    return token


def read_attempt(folder: Path) -> str:
    return (Path(folder) / ATTEMPT_FILE).read_text().strip()
