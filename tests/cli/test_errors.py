"""Bad input gives one line on stderr and exit status 2 (a ProteinperfError or OSError);
anything else is a bug and propagates with its traceback."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import proteinperf.cli.score
from proteinperf.cli import main
from proteinperf.data.fasta import DataError
from proteinperf.errors import ConfigError, InputError, ProteinperfError

# (argv with {name} for the inputs fixture and {out} for a fresh output path, expected text)
CASES = [
    ("prepare {missing} --out {out} --quiet", "missing: no such file"),
    ("prepare {bad} --out {out} --quiet", "bad.fa:4: record 'b': invalid character '1'"),
    ("prepare {badint} --out {out} --quiet", "badint.fa:3: record 'b': n='x' is not a"),
    ("prepare {good} --out {out} --valid-fraction 2 --quiet", "fractions must be"),
    ("prepare {good} --out {full} --quiet", "full: exists and is not a corpus directory"),
    ("data sample --root {notes}", "notes.txt: File exists"),
    ("evaluate {missing} {good} --quiet", "missing: no such file"),
    ("evaluate {junk} {good} --quiet", "junk.pt: corrupt or not a PyTorch file"),
    ("evaluate {bid} {bad} --quiet", "bad.fa:4: record 'b'"),
    ("evaluate {bid} {good} --mask-prob 2 --quiet", "--mask-prob must be in (0, 1)"),
    ("embed {bid} {missing} {out} --quiet", "missing: no such file"),
    ("embed {bid} {good} {out} --layers 9 --quiet", "layer 9 does not exist"),
    ("embed {bid} {good} {full} --quiet", "full already exists: add --overwrite"),
    ("score {bid} {good} {full} --quiet", "full already exists: add --overwrite"),
    ("score {bid} {empty} {out} --quiet", "empty.fa: empty file"),
    ("score {bid} {good} {out} --strategy log-likelihood --quiet", "no exact log-likelihood"),
    ("score-mutations {bid} --sequence MKV --mutations {missing} --out {out}", "no such file"),
    ("score-mutations {bid} --sequence MKV --mutations {badmuts} --out {out}", "csv:3:"),
    ("score-mutations {bid} --sequence MKV --mutations {muts} --out {out} --window x",
     "--window must be a number"),
    ("score-mutations {bid} --reference {emptycsv} --dms-dir {full} --out {out}",
     "empty.csv: not a readable CSV"),
    ("generate {bid} {out} --num-samples 1 --quiet", "generation needs a causal model"),
    ("generate {causal} {full} --num-samples 1 --quiet", "full already exists: add --overwrite"),
    ("evaluate {bid} {good} --out {full} --quiet", "full already exists: add --overwrite"),
    ("generate {causal} {out} --num-samples 1 --prompt MK1 --quiet", "'1' is not an amino"),
    ("contacts {bid} {good} {out} --quiet", "no contact head"),
    ("contacts {junk} {good} {out} --quiet", "corrupt or not a PyTorch file"),
    ("attention {bid} {good} {out} --layers 7", "layer 7 does not exist"),
    ("attention {bid} {good} {out} --layers 0", "layer 0 is the token embeddings"),
    ("attention {bid} {good} {out} --protein zzz", "protein 'zzz' not found"),
    ("attention {bid} {missing} {out}", "missing: No such file or directory"),
    ("similarity {bid} {good} {good}", "is the input"),
    ("similarity {bid} {good} {full}", "full exists (use --overwrite"),
    ("similarity {bid} {empty} {out}", "empty.fa: empty file"),
    ("convert-esm {missing}.pt {out}", "missing.pt: no such file"),
    ("convert-esm {bid} {out}", "not a fair-esm file"),
    ("export-hf {missing} {out}", "missing: no such file"),
    ("export-hf {junk} {out}", "junk.pt: corrupt or not a PyTorch file"),
    ("export-hf {bid} {full}", "full already exists: add --overwrite"),
    ("embed {full} {good} {out} --quiet", "full: is a directory without config.json"),
    ("models --export {bid}", "--export needs --out"),
    ("models --export {bid} --out {out} --card {{oops", "--card: not valid JSON"),
    ("evaluate {bid} {badcorpus} --quiet", "manifest.json: corrupt manifest"),
]  # fmt: skip


@pytest.mark.parametrize("argv, expected", CASES, ids=[c[0].split(" {")[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(inputs, tmp_path, capsys, argv, expected):
    args = [a.format(out=tmp_path / "out", **inputs) for a in argv.split()]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"proteinperf {args[0]}: error: ") and expected in err, err
    assert not (tmp_path / "out").exists()  # nothing half-written
    folders = {tmp_path, *(Path(v).parent for v in inputs.values())}
    assert not [p for f in folders for p in f.glob(".*.shards")]  # checked before any work


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("boom"), KeyError("boom")])
def test_unexpected_exceptions_are_bugs_and_propagate(monkeypatch, inputs, tmp_path, exc):
    def run(args):
        raise exc

    monkeypatch.setattr(proteinperf.cli.score, "run", run)
    with pytest.raises(type(exc), match="boom"):
        main(["score", inputs["bid"], inputs["good"], str(tmp_path / "s.csv")])


@pytest.mark.parametrize("exc", [InputError("x.csv:3: bad"), PermissionError(13, "denied", "o")])
def test_user_errors_and_os_errors_are_one_line(monkeypatch, inputs, tmp_path, capsys, exc):
    def run(args):
        raise exc

    monkeypatch.setattr(proteinperf.cli.score, "run", run)
    assert main(["score", inputs["bid"], inputs["good"], str(tmp_path / "s.csv")]) == 2
    assert capsys.readouterr().err in (
        "proteinperf score: error: x.csv:3: bad\n",
        "proteinperf score: error: o: denied\n",
    )
    monkeypatch.setenv("PROTEINPERF_DEBUG", "1")  # the traceback on request
    with pytest.raises(type(exc)):
        main(["score", inputs["bid"], inputs["good"], str(tmp_path / "s.csv")])


def test_error_classes_keep_value_error():
    for cls in (DataError, ConfigError, InputError):
        assert issubclass(cls, ProteinperfError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("unbuffered", [True, False])
def test_closed_stdout_pipe_is_not_an_error(unbuffered):
    # `proteinperf models | head -1`: the reader may go before the command writes. Buffered
    # (an installed command), the few KB reach the pipe only when stdout is flushed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "proteinperf.cli", "models", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 128 + signal.SIGPIPE  # what a shell shows for a process it cut off
