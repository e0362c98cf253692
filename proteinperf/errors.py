"""The errors proteinperf raises for bad input: the CLI prints them as one line, exit status 2.

Anything else that escapes a command (a plain ValueError, KeyError, RuntimeError, ...) is a bug
and keeps its traceback. The data, checkpoint and conversion errors live beside their code
(fasta.DataError, checkpoint.CheckpointError, interop.esm.ESMConversionError,
cli.CommandError) and all derive from ProteinperfError; the two below are for the rest.
Both are also ValueErrors, as the checks they replace were.

Standard-library imports only: `import proteinperf` (the CLI's --version, --help) stays free
of torch.
"""

import importlib
import signal


class ProteinperfError(Exception):
    """A failure the user can fix; its message is one line that names the file, record or
    option at fault."""


class InputError(ProteinperfError, ValueError):
    """An input (a CSV, a sequence, a prompt) is malformed, or an output path cannot be used."""


class ConfigError(ProteinperfError, ValueError):
    """An option or configuration value is out of range, unknown or inconsistent with the
    model (e.g. --device cuda without a GPU, a model config that does not validate)."""


class Stopped(BaseException):
    """SIGTERM or SIGINT reached a command: unwinds like KeyboardInterrupt, so every cleanup
    (temporary outputs, open shards) runs, and the CLI exits with 128 + the signal's number.

    Not a KeyboardInterrupt: Lightning answers that with ``sys.exit(1)`` and no message, and
    re-raises anything else after its own teardown."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # what stops a command: raised as Stopped

_stop_signal: list[int] = []  # the signal a stop handler raised Stopped for (see check_stopped)


def note_stop(signum: int | None) -> None:
    """Record (or, with None, forget) the signal that stopped this command."""
    _stop_signal[:] = [] if signum is None else [signum]


def check_stopped() -> None:
    """Raise ``Stopped`` again if a stop signal came: a handler's exception raised inside a
    callback whose errors Python only prints (an at-fork hook, a finaliser) is lost, so loops
    call this once per batch."""
    if _stop_signal:
        raise Stopped(_stop_signal[0])


def require_extra(
    module: str, extra: str, purpose: str, error: type[ProteinperfError] = ConfigError
):
    """``module`` imported, or ``error``: "<purpose> needs the <extra> extra (pip install ...)"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(
            f"{purpose} needs the {extra} extra (pip install 'proteinperf[{extra}]')"
        ) from None
