"""Failures injected into bulk inference (embed, score) from the test side.

``failing(after_batches)`` patches ``bulk.RankRun`` (one rank's batches, run in a plain loop
on one process or from Lightning's predict loop on several) in this process, for runs the
test makes itself: a rank raises ``SimulatedKill`` once it has written that many batches, or
before merging if it has fewer. ``fault_env(folder, env, ...)`` does the same for a
``python -m proteinperf.cli`` child and every rank Lightning starts from it: a
``sitecustomize.py`` written to ``folder``, put first on PYTHONPATH, installs the patch when
each process starts; ``kill=True`` makes the rank die by SIGKILL (no ``except`` runs) instead
of raising.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

from proteinperf.inference import bulk

HERE = Path(__file__).resolve().parent


class SimulatedKill(RuntimeError):
    """What a failing rank raises (its name appears in the other ranks' error)."""


def install(
    after_batches: int, kill: bool = False, ranks: Sequence[int] | None = None, setattr=setattr
) -> None:
    """Patch ``bulk.RankRun``: the chosen ranks (all if None) fail after ``after_batches``
    written batches, or before merging. ``setattr``: monkeypatch.setattr to undo it later."""
    cls = bulk.RankRun
    after_step, finish = cls.after_step, cls.finish

    def chosen(rank_run) -> bool:
        return ranks is None or rank_run.rank in ranks

    def fail(rank_run) -> None:
        what = f"rank {rank_run.rank} after {rank_run.batches_done} batches"
        if kill:
            rank_run.part.close()  # what it wrote is on disk; then no handler runs
            os.kill(os.getpid(), signal.SIGKILL)
        raise SimulatedKill(what)

    def failing_after_step(self, *args, **kwargs):
        after_step(self, *args, **kwargs)
        if chosen(self) and self.batches_done >= after_batches:
            fail(self)

    def failing_finish(self):
        if chosen(self):
            fail(self)
        return finish(self)

    setattr(cls, "after_step", failing_after_step)
    setattr(cls, "finish", failing_finish)


@contextlib.contextmanager
def failing(after_batches: int, ranks: Sequence[int] | None = None) -> Iterator[None]:
    """Bulk runs inside the block fail as ``install`` says; restored afterwards."""
    import pytest  # not in the children fault_env starts (their sitecustomize imports this)

    with pytest.MonkeyPatch.context() as patch:
        install(after_batches, ranks=ranks, setattr=patch.setattr)
        yield


def fault_env(
    folder: Path,
    env: dict,
    after_batches: int,
    kill: bool = False,
    ranks: Sequence[int] | None = None,
) -> dict:
    """``env`` (a child's environment, with this checkout on PYTHONPATH) with a sitecustomize
    that installs the failure in every process started with it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\nimport bulk_faults\n"
        f"bulk_faults.install({after_batches!r}, kill={kill!r}, "
        f"ranks={None if ranks is None else list(ranks)!r})\n"
    )
    paths = [str(folder), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}
