"""Never destroy an input, never let two runs share an output, stop promptly when told."""

import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import SEQUENCES, write_fasta

from proteinperf.atomic import atomic_output, sweep_leftovers
from proteinperf.cli import main
from proteinperf.outputs import OutputBusyError, check_apart, output_lock

# (argv with {name} for the inputs fixture plus {copy}: a private copy of good.fa, {copy}
# also being the output; what the one error line says)
SAME_PATH = [
    "embed {bid} {copy} {copy} --quiet",
    "embed {bid} {copy} {copy} --quiet --format npz",
    "score {bid} {copy} {copy} --quiet",
    "evaluate {bid} {copy} --out {copy} --quiet",
    "generate {causal} {copy} --prompt-fasta {copy} --num-samples 1 --quiet",
    "score-mutations {bid} --sequence MKV --mutations {muts} --out {muts}",
    "score-mutations {bid} --fasta {copy} --mutations {muts} --out {copy}",
    "score-mutations {bid} --sequence MKV --mutations {muts} --out {out} --summary {muts}",
    "contacts {bid} {copy} {copy} --quiet",
    "prepare {copy} --out {copy} --quiet",
    "convert-esm {copy} {copy}",
    "export-hf {copy} {copy}",
]


@pytest.mark.parametrize("argv", SAME_PATH, ids=[a.split(" {")[0] for a in SAME_PATH])
def test_an_output_that_is_an_input_is_refused(inputs, tmp_path, capsys, argv):
    copy = shutil.copy(inputs["good"], tmp_path / "x.faa")
    muts = shutil.copy(inputs["muts"], tmp_path / "m.csv")
    before = Path(copy).read_bytes(), Path(muts).read_bytes()
    fill = dict(inputs, copy=copy, muts=muts, out=tmp_path / "out.csv")
    assert main([a.format(**fill) for a in argv.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input" in err, err
    assert (Path(copy).read_bytes(), Path(muts).read_bytes()) == before


def test_aliases_of_an_input_are_refused(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", SEQUENCES)
    os.symlink(fasta, tmp_path / "link.fa")
    os.link(fasta, tmp_path / "hard.fa")
    for alias in (tmp_path / "link.fa", tmp_path / "hard.fa", tmp_path / "sub" / ".." / "in.fa"):
        with pytest.raises(OutputBusyError.__mro__[1], match="is the input"):
            check_apart([fasta, "a-model-name"], [alias])
    with pytest.raises(ValueError, match="contains the input"):  # a folder output replaced
        check_apart([fasta], [tmp_path])
    check_apart([fasta, None], [tmp_path / "out.h5", None])  # apart: fine


def test_an_existing_corpus_is_replaced_only_with_overwrite(inputs, tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["prepare", inputs["good"], "--out", str(out), "--quiet"]) == 0
    manifest = (out / "manifest.json").read_bytes()
    other = write_fasta(tmp_path / "other.fa", {"z": "MKKKKKKKKKK"})
    assert main(["prepare", other, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a corpus already exists there (built from" in err and "--overwrite" in err
    assert (out / "manifest.json").read_bytes() == manifest
    assert main(["prepare", other, "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert (out / "manifest.json").read_bytes() != manifest


def test_a_second_run_on_a_locked_output_is_told_who_holds_it(tmp_path):
    out = tmp_path / "emb.h5"
    with output_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        code = (
            "import sys; from proteinperf.outputs import output_lock\n"
            "try:\n    output_lock(sys.argv[1]).__enter__()\n"
            "except Exception as e: print(e); sys.exit(3)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", code, str(out)], capture_output=True, text=True
        )
        assert other.returncode == 3
        assert f"being written by another run (pid {os.getpid()}" in other.stdout
    assert not lock.exists()  # released and removed
    with output_lock(out):  # and free again
        pass


def test_a_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "emb.h5"
    code = "import sys, os; from proteinperf.outputs import output_lock\n"
    code += "held = output_lock(sys.argv[1]); held.__enter__(); os.kill(os.getpid(), 9)\n"
    subprocess.run([sys.executable, "-c", code, str(out)])
    assert (tmp_path / ".emb.h5.lock").exists()  # left behind by SIGKILL...
    with output_lock(out):  # ...but not held
        pass


def test_temporaries_of_dead_runs_are_swept(tmp_path, capsys):
    target = tmp_path / "corpus"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)  # fmt: skip
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())
    stale = tmp_path / f".corpus.tmp-{host}.{pid}-abcd1234"
    (stale / "tokens").mkdir(parents=True)
    live = tmp_path / f".corpus.tmp-{host}.{os.getpid()}-efgh5678"
    live.mkdir()
    old_style = tmp_path / ".corpus.tmp-k2j3h4g5"
    old_style.mkdir()
    unrelated = tmp_path / ".other.tmp-x"
    unrelated.mkdir()
    with atomic_output(target, directory=True) as tmp:
        (tmp / "f").write_text("x")
    assert not stale.exists() and live.exists() and old_style.exists() and unrelated.exists()
    assert f"{old_style} looks like what an interrupted run left" in capsys.readouterr().err
    assert sweep_leftovers(target, report=False) == []


def test_a_killed_run_leaves_nothing_a_later_run_keeps(tmp_path):
    target = tmp_path / "out.txt"
    code = (
        "import os, sys; from proteinperf.atomic import atomic_output\n"
        "with atomic_output(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half'); os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(target)])
    assert len(list(tmp_path.glob(".out.txt.tmp-*"))) == 1
    with atomic_output(target) as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _run_and_signal(argv, signum, ready, cwd):
    """Start a `proteinperf` command, send ``signum`` once ``ready(pid)`` holds; (exit status,
    seconds from the signal to the exit, stderr). The processes it had started when the signal
    came must not outlive it."""
    env = dict(os.environ, WANDB_MODE="disabled")
    with tempfile.TemporaryFile("w+") as log:  # not a pipe: a leftover worker would hold it
        proc = subprocess.Popen(
            [sys.executable, "-m", "proteinperf.cli", *argv],
            cwd=cwd, stderr=log, text=True, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not ready(proc.pid) and time.monotonic() < deadline:
            assert proc.poll() is None, _read(log)
            time.sleep(0.05)
        assert proc.poll() is None, _read(log)
        started = _children(proc.pid)
        sent = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=120)
        seconds = time.monotonic() - sent
        left = [pid for pid in started if _alive(pid)]
        err = _read(log)
    assert not left, f"processes {left} outlived the command: {err}"
    return proc.returncode, seconds, err


def _read(log) -> str:
    log.seek(0)
    return log.read()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie has ended: an orphan waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def _predict_started(out: Path):
    """The rank's heartbeat beats and its batch worker is forked: its batches start (the
    shards are journaled every few seconds only, too late a sign for a run this short)."""

    def ready(pid):
        return any(out.parent.glob(f".{out.name}.shards/alive-*")) and bool(_children(pid))

    return ready


def _many_records(path, n=600):
    seqs = list(SEQUENCES.values())
    records = {f"r{i}": (seqs[i % len(seqs)] * 4)[: 60 + i % 90] for i in range(n)}
    return write_fasta(path, records)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("command, signum", [("embed", signal.SIGTERM), ("score", signal.SIGINT)])
def test_embed_and_score_stop_on_signals_and_resume(inputs, tmp_path, command, signum):
    from proteinperf.inference.runner import small_input

    fasta = _many_records(tmp_path / "many.fa")
    note = " " + "a long description line " * 20  # bytes, not residues: the bulk path
    Path(fasta).write_text(Path(fasta).read_text().replace(" some description", note))
    assert not small_input(fasta)  # the bulk path: the one that keeps batches for --resume
    out = tmp_path / ("out.h5" if command == "embed" else "out.csv")
    argv = [command, inputs["bid"], fasta, str(out), "--quiet", "--toks-per-batch", "1024"]
    argv += ["--strategy", "wt-marginals"] if command == "score" else []  # one pass a batch
    code, seconds, err = _run_and_signal(argv, signum, _predict_started(out), tmp_path)
    assert code == 128 + signum, err
    assert seconds < 10, seconds  # was 30-45 s for SIGTERM: Lightning noted it and ran on
    line = err.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(signum).name}" in line and "--resume" in line, err
    assert not out.exists() and not (tmp_path / f".{out.name}.lock").exists()
    assert main(argv + ["--resume"]) == 0
    whole = tmp_path / ("whole" + out.suffix)
    assert main([command, inputs["bid"], fasta, str(whole), *argv[4:]]) == 0
    assert filecmp.cmp(out, whole, shallow=False)


@pytest.mark.slow
def test_prepare_stops_on_sigint_without_a_traceback(tmp_path):
    fasta = _many_records(tmp_path / "many.fa", 300_000)

    def ready(pid):
        return any(tmp_path.glob(".corpus.tmp-*/*"))

    code, seconds, err = _run_and_signal(
        ["prepare", fasta, "--out", str(tmp_path / "corpus")], signal.SIGINT, ready, tmp_path
    )
    assert code == 130 and seconds < 5, (code, seconds, err)
    assert "Traceback" not in err and "stopped by SIGINT" in err.strip().splitlines()[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["many.fa"]


def test_a_swallowed_stop_is_raised_again_at_the_next_batch():
    # A handler's Stopped raised inside an at-fork hook or a finaliser is only printed by
    # Python; the batch loops call check_stopped, which raises it again.
    from proteinperf.errors import Stopped, check_stopped, note_stop

    check_stopped()  # nothing pending
    note_stop(signal.SIGTERM)
    try:
        with pytest.raises(Stopped) as stopped:
            check_stopped()
        assert stopped.value.signum == signal.SIGTERM
    finally:
        note_stop(None)
    check_stopped()
