"""`proteinperf` command line: argument parsing and wiring only.

Each subcommand lives in its own module here and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (a callable taking the parsed namespace and returning an exit
code). The work itself happens in library functions that take paths and objects.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import signal
import sys

from proteinperf import __version__
from proteinperf.errors import STOP_SIGNALS, ProteinperfError, Stopped, note_stop

# Order of appearance in --help.
COMMAND_MODULES = (
    "train",
    "prepare",
    "data",
    "evaluate",
    "embed",
    "score",
    "score_mutations",
    "generate",
    "contacts",
    "attention",
    "similarity",
    "convert_esm",
    "export_hf",
    "models",
)


class CommandError(ProteinperfError):
    """A user-facing failure of a command's own checks: printed as one line, exit status 2."""


# Bad input or environment: one line, exit 2 (PROTEINPERF_DEBUG=1 shows the traceback). Every
# check on user input raises a ProteinperfError; OSError covers missing, unreadable and
# unwritable paths. Anything else (ValueError, KeyError, RuntimeError, ...) is a bug and keeps
# its traceback.
USER_ERRORS = (ProteinperfError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proteinperf",
        description="Performer (FAVOR+) protein language models: prepare data, embed, score, "
        "analyse attention, convert ESM-2.",
    )
    parser.add_argument("--version", action="version", version=f"proteinperf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # A missing command module is a broken install: fail loudly, never drop the command.
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    whole_process = argv is None  # the `proteinperf` command itself, not a caller in Python
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["train"] and not {"-h", "--help"} & set(argv[1:2]):
        # Hydra's own flags (-m, --cfg job) look like options to argparse: hand them over as is.
        from proteinperf.cli import train

        args = argparse.Namespace(command="train", func=train.run, overrides=argv[1:])
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with stop_on_signals():
            check_paths(args)
            code = int(args.func(args) or 0)
            if whole_process:  # a closed pipe shows here, not in the interpreter's last flush
                sys.stdout.flush()
        if whole_process and getattr(args, "exit_at_once", False):
            # Its files are closed: skip the interpreter's teardown, which frees the objects
            # numba and LLVM loaded one by one (0.1-0.15 CPU-s of a 0.6 s `prepare`).
            _exit_now(code)
        return code
    except (Stopped, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        hint = getattr(args, "stop_hint", None)
        hint = hint(args) if callable(hint) else hint
        print(
            f"proteinperf {args.command}: stopped by {signal.Signals(signum).name}"
            + (f"; {hint}" if hint else "; nothing was written"),
            file=sys.stderr,
        )
        if whole_process:
            # Everything was unwound and cleaned up above; exit without joining worker
            # threads that may still finish a block (or a first kernel compile) for seconds.
            _exit_now(128 + signum)
        return 128 + signum
    except USER_ERRORS as err:
        if isinstance(err, BrokenPipeError) and whole_process and _stdout_closed():
            return 128 + signal.SIGPIPE  # `proteinperf models | head`: the reader had enough
        if os.environ.get("PROTEINPERF_DEBUG"):
            raise
        print(f"proteinperf {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end);
    if so, stdout becomes /dev/null so that nothing, the interpreter's final flush included,
    writes to the closed pipe again."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
    except (AttributeError, OSError, ValueError):  # no poll (Windows), stdout not a file
        return False
    poller.register(fd, select.POLLOUT)
    if not any(event & select.POLLERR for _, event in poller.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown, but end our daemonic worker processes (a
    DataLoader's) as that teardown would have: a worker looks for its parent only every 5 s,
    holding our stdout and stderr open meanwhile, and one forked just before a stop signal may
    have been orphaned before it first looked, and then waits forever. Other children (ranks
    started by ddp_spawn) are left to finish their own clean-up, as the teardown leaves them."""
    import multiprocessing

    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe or file
                stream.flush()
        if hasattr(signal, "SIGCHLD"):  # torch's handler raises when a worker dies by a signal
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for child in multiprocessing.active_children():
            if child.daemon:
                with contextlib.suppress(Exception):
                    child.kill()
                    child.join(timeout=5)
    finally:
        os._exit(code)


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (timeout, docker stop, systemd, SLURM) and SIGINT (Ctrl-C) raise ``Stopped``
    in the main thread, so a command unwinds and cleans up as on an error. A second signal
    while it unwinds ends the process at once (the signal's default action).

    Lightning keeps handlers it finds installed and calls them after its own, so this also
    stops a predict loop, which would otherwise note SIGTERM and run on."""
    if not _in_main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum, frame):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        note_stop(signum)  # for check_stopped, should this exception be swallowed
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        note_stop(None)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def check_paths(args: argparse.Namespace) -> None:
    """Refuse an output that is one of the inputs, or that exists without --overwrite
    (commands name theirs with
    ``set_defaults(input_args=(...), output_args=(...))``: attribute names of the namespace)."""
    outputs = getattr(args, "output_args", ())
    if not outputs:
        return
    from proteinperf.cli._outputs import check_existing
    from proteinperf.outputs import check_apart

    check_apart(
        [getattr(args, name, None) for name in getattr(args, "input_args", ())],
        [getattr(args, name, None) for name in outputs],
    )
    check_existing(args)


def error_line(err: BaseException) -> str:
    """The one line printed for a user error: its message's first line (an OSError without a
    file name in its message gets one)."""
    text = str(err).strip()
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
