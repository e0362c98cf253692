"""Failures injected into bulk inference (embed, score) from the test side.

``failing(after_batches)`` patches ``BulkInference`` in this process, for runs the test makes
itself: a rank raises ``SimulatedKill`` once it has written that many batches, or before
merging if it has fewer. ``fault_env(folder, env, ...)`` does the same for a
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

from proteinperf.inference import distributed

HERE = Path(__file__).resolve().parent


class SimulatedKill(RuntimeError):
    """What a failing rank raises (its name appears in the other ranks' error)."""


def install(
    after_batches: int, kill: bool = False, ranks: Sequence[int] | None = None, setattr=setattr
) -> None:
    """Patch ``BulkInference``: the chosen ranks (all if None) fail after ``after_batches``
    written batches, or before merging. ``setattr``: monkeypatch.setattr to undo it later."""
    cls = distributed.BulkInference
    batch_end, predict_end = cls.on_predict_batch_end, cls.on_predict_end

    def chosen(module) -> bool:
        return ranks is None or module.global_rank in ranks

    def fail(module) -> None:
        what = f"rank {module.global_rank} after {module.batches} batches"
        if kill:
            module.part.close()  # what it wrote is on disk; then no handler runs
            os.kill(os.getpid(), signal.SIGKILL)
        raise SimulatedKill(what)

    def on_predict_batch_end(self, *args, **kwargs):
        batch_end(self, *args, **kwargs)
        if chosen(self) and self.batches >= after_batches:
            fail(self)

    def on_predict_end(self):
        if chosen(self):
            fail(self)
        predict_end(self)

    setattr(cls, "on_predict_batch_end", on_predict_batch_end)
    setattr(cls, "on_predict_end", on_predict_end)


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
