"""`proteinperf train [Hydra overrides]`: what `make train` does, for a pip-installed package.

Everything after `train` goes to the Hydra entry point verbatim (`model=tiny`, `-m ...`,
`--cfg job`, `--hydra-help`): the command replaces itself with `python -m proteinperf.train`,
so multirun, Lightning's DDP re-launch and exit codes behave exactly as with `make train`.
"""

from __future__ import annotations

import argparse
import sys

ENTRY_MODULE = "proteinperf.train"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (Hydra overrides, as `make train`)",
        description="Train and evaluate a model with the Hydra config tree (conf/ of a "
        "checkout, else the copy shipped in the package): `proteinperf train "
        "model=performer_causal trainer.max_steps=200`, `proteinperf train -m "
        "seed=0,1,2`. `proteinperf train --hydra-help` lists the config groups; "
        "`--cfg job` prints the composed config without training.",
        usage="proteinperf train [OVERRIDE ...]",
    )
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, metavar="OVERRIDE", help="Hydra overrides"
    )
    parser.set_defaults(func=run)


def entry_argv(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", ENTRY_MODULE, *overrides]


def run(args: argparse.Namespace) -> int:
    """The Hydra entry in a child process (Hydra owns its own argv and working directory); its
    exit status is the command's. A child, not exec: `main(["train", ...])` called from Python
    (a notebook) must not replace the caller's interpreter. A stop signal (SIGTERM, SIGINT,
    SIGUSR1 for preemption) is passed on to the child, which saves a checkpoint and exits;
    this process waits for it and exits with its status."""
    import signal
    import subprocess

    from proteinperf.errors import Stopped

    sys.stdout.flush()
    sys.stderr.flush()
    child = subprocess.Popen(entry_argv(args.overrides))
    try:
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: child.send_signal(signum))
    except ValueError:  # not the main thread: no handlers here
        previous = None
    try:
        while True:
            try:
                return child.wait()
            except (Stopped, KeyboardInterrupt) as stop:
                signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
                if child.poll() is None and signum != signal.SIGINT:
                    child.send_signal(signum)  # Ctrl-C reaches the whole process group
                _ignore_stop_signals()  # wait for the child's checkpoint, however long
    finally:
        if previous is not None:
            signal.signal(signal.SIGUSR1, previous)


def _ignore_stop_signals() -> None:
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
