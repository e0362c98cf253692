import importlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import SAMPLE, write

from proteinperf.data import DataError, ProteinCorpus, prepare, read_fasta

prep = importlib.import_module("proteinperf.data.prepare")  # the package's `prepare` is a function


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "manifest.json"}


def test_round_trip_and_workers_byte_identical(tmp_path):
    one = prepare(
        [SAMPLE],
        tmp_path / "w1",
        workers=1,
        block_size=20_000,
        progress=False,
        valid_fraction=0.05,
        test_fraction=0.05,
    )
    prepare(
        [SAMPLE],
        tmp_path / "w2",
        workers=2,
        block_size=20_000,
        progress=False,
        valid_fraction=0.05,
        test_fraction=0.05,
        direct_io=False,  # and the page-cache route writes the same bytes
    )
    assert _files(tmp_path / "w1") == _files(tmp_path / "w2")
    # the input checksum is taken beside the parse with workers > 1, inside it with one
    two = json.loads((tmp_path / "w2" / "manifest.json").read_text())
    assert two["inputs"] == one["inputs"]
    assert one["inputs"][0]["checksum"].startswith("sha256-of-block-adler32:")
    records = {r.id: r.sequence for r in read_fasta(SAMPLE)}
    seen = 0
    for split in ("train", "valid", "test"):
        c = ProteinCorpus(tmp_path / "w1", split)
        assert len(c) == one["splits"][split]["records"] > 20
        for i in range(len(c)):
            assert c.sequence(i) == records[c.id(i)]
        assert c.tokens(0).dtype == np.uint8 and (c.lengths > 0).all()
        meta = c.metadata()
        assert list(meta["length"]) == list(c.lengths)
        seen += len(c)
    assert seen == len(records)
    manifest = json.loads((tmp_path / "w1" / "manifest.json").read_text())
    assert manifest["inputs"][0]["size"] == SAMPLE.stat().st_size
    assert manifest["alphabet"][4] == "L"


def test_clusters_never_straddle_splits(tmp_path):
    recs = "".join(
        f">UniRef50_P{i % 97:05d} member {i}\nMKV{'A' * (i % 13)}\n" for i in range(3000)
    )
    recs += "".join(f">sp|P{i:05d}|X_HUMAN swissprot copy\nMKVL\n" for i in range(97))
    path = write(tmp_path / "c.fa", recs)
    m = prepare(
        [path],
        tmp_path / "c",
        workers=2,
        block_size=4096,
        progress=False,
        valid_fraction=0.2,
        test_fraction=0.2,
    )
    where = {}
    for split in ("train", "valid", "test"):
        for rid in ProteinCorpus(tmp_path / "c", split).ids:
            key = rid.split("_", 1)[1] if rid.startswith("UniRef") else rid.split("|")[1]
            where.setdefault(key, set()).add(split)
    assert all(len(s) == 1 for s in where.values())
    assert m["duplicate_ids"] == 3000 - 97


def test_skips_and_policies(tmp_path):
    path = write(
        tmp_path / "s.fa", ">e1\n\n>short\nMK\n>long\n" + "A" * 50 + "\n>j\nMKJ\n>ok\nMKV*\n"
    )
    m = prepare(
        [path],
        tmp_path / "s",
        min_length=3,
        max_length=10,
        invalid="skip-record",
        progress=False,
        workers=1,
        valid_fraction=0,
        test_fraction=0,
    )
    assert m["skipped"] == {"empty": 1, "too_short": 1, "too_long": 1, "invalid_skipped": 1}
    assert ProteinCorpus(tmp_path / "s").sequence(0) == "MKV"
    m = prepare(
        [path],
        tmp_path / "u",
        invalid="unk",
        progress=False,
        workers=1,
        valid_fraction=0,
        test_fraction=0,
    )
    c = ProteinCorpus(tmp_path / "u")
    assert c.sequence(c.ids.index("j")) == "MK<unk>"
    with pytest.raises(DataError, match=r"s.fa:8: record 'j': invalid character 'J'"):
        prepare([path], tmp_path / "err", progress=False, workers=1)
    assert not (tmp_path / "err").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".err")]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"MKV\n", "no '>' header"),
        (b"@r\nAC\n+\nII\n", "FASTQ"),
        (b"LOCUS  X\n", "GenBank"),
        (bytes(range(256)) * 4, "binary"),
        (b">a\n\n>b\n", "no records"),
    ],
)
def test_bad_input_leaves_nothing(tmp_path, data, message):
    path = write(tmp_path / "bad.fa", data)
    with pytest.raises(DataError, match=message) as e:
        prepare([path], tmp_path / "out", progress=False, workers=1)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa"]


def test_non_numeric_integer_field_names_file_and_line(tmp_path):
    records = "".join(f">r{k} n={k} TaxID=9\nMKV\nLL\n" for k in range(400))
    path = write(tmp_path / "t.fa", records + ">odd n=1 TaxID=96O6\nMKV\n")
    with pytest.raises(DataError, match=r"t.fa:1201: record 'odd': TaxID='96O6' is not a wh"):
        prepare([path], tmp_path / "out", progress=False, workers=2, block_size=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.fa"]


def test_out_that_is_not_a_corpus_is_never_replaced(tmp_path):
    path = write(tmp_path / "s.fa", ">a\nMKV\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    (tmp_path / "notes.txt").write_text("y")
    for out in (tmp_path / "mine", tmp_path / "notes.txt"):
        with pytest.raises(DataError, match="exists and is not a corpus directory"):
            prepare([path], out, progress=False, workers=1)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"
    assert (tmp_path / "notes.txt").read_text() == "y"
    (tmp_path / "empty").mkdir()
    prepare([path], tmp_path / "empty", progress=False, workers=1)
    with pytest.raises(DataError, match="a corpus already exists there"):
        prepare([path], tmp_path / "empty", progress=False, workers=1)
    prepare([path], tmp_path / "empty", progress=False, workers=1, overwrite=True)  # replaced


def test_file_truncated_while_mapped_is_an_error_line(tmp_path, monkeypatch):
    path = write(tmp_path / "s.fa", SAMPLE.read_bytes())
    tasks = [task for task, _ in prep._block_tasks(path, 20_000)]
    assert len(tasks) > 3
    os.truncate(path, tasks[2][1] + 10)  # shrinks below the third block's end after planning
    with pytest.raises(DataError, match=r"s.fa: changed while being read \(size .* bytes\)"):
        prep._work(tasks[3], {})  # mapped past the end, this would die of SIGBUS
    with pytest.raises(DataError, match="changed while being read"):
        prep._work(tasks[0], {})  # the size check also covers blocks that still fit

    # A change while a block is parsed is caught afterwards (re-stat), and nothing is left.
    path = write(tmp_path / "s.fa", SAMPLE.read_bytes())
    parse = prep._parse

    def parse_then_truncate(data, options, *checksum):
        r = parse(data, options, *checksum)
        os.truncate(path, 100)
        return r

    monkeypatch.setattr(prep, "_parse", parse_then_truncate)
    with pytest.raises(DataError, match=r"s.fa: changed while being read"):
        prepare([path], tmp_path / "out", progress=False, workers=1, block_size=20_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.fa"]


def test_compressed_and_truncated(tmp_path):
    gz = write(tmp_path / "x.fa.gz", SAMPLE.read_bytes())
    m = prepare([gz], tmp_path / "gz", progress=False, workers=2, block_size=30_000)
    plain = prepare([SAMPLE], tmp_path / "plain", progress=False, workers=1)
    assert m["splits"] == plain["splits"]
    gz_files, plain_files = _files(tmp_path / "gz"), _files(tmp_path / "plain")
    for name in plain_files:  # parquet row groups follow block sizes; compare contents there
        if name.endswith(".parquet"):
            assert pd.read_parquet(tmp_path / "gz" / name).equals(
                pd.read_parquet(tmp_path / "plain" / name)
            )
        else:
            assert gz_files[name] == plain_files[name]
    gz.write_bytes(gz.read_bytes()[:20_000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        prepare([gz], tmp_path / "t", progress=False, workers=1)
    assert not (tmp_path / "t").exists()


def test_interrupted_run_leaves_nothing_complete_and_rerun_works(tmp_path):
    big = write(tmp_path / "big.fa", SAMPLE.read_bytes() * 80)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "proteinperf.cli", "prepare", str(big), "--out", str(out),
           "--workers", "1", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".out.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.005)  # interrupt while the temporary directory is being filled
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) != 0
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert subprocess.run(cmd).returncode == 0
    assert (out / "manifest.json").exists()
    assert subprocess.run(cmd).returncode == 2  # a finished corpus is kept...
    assert subprocess.run([*cmd, "--overwrite"]).returncode == 0  # ...unless asked


def test_cli_prepare(tmp_path):
    from proteinperf.cli import main

    out = tmp_path / "o"
    argv = ["prepare", str(SAMPLE), "--out", str(out), "--valid-fraction", "0.1"]
    assert main([*argv, "--workers", "1", "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["valid"]["records"] > 50
    assert pd.read_parquet(out / "valid.meta.parquet").shape[0] > 50
    buffered = tmp_path / "b"
    argv = ["prepare", str(SAMPLE), "--out", str(buffered), "--valid-fraction", "0.1"]
    assert main([*argv, "--buffered-writes", "--quiet"]) == 0
    for split in ("train", "valid", "test"):
        name = f"{split}.tokens.bin"
        assert (buffered / name).read_bytes() == (out / name).read_bytes()


def test_duplicate_count_same_in_one_pass_and_many(tmp_path):
    rng = np.random.default_rng(0)
    runs = [
        np.sort(rng.integers(0, 2**63, 500, dtype=np.int64).astype(np.uint64)) for _ in range(7)
    ]
    runs.append(runs[2][:123].copy())  # 123 repeats of earlier ids
    path = tmp_path / "hashes"
    np.concatenate(runs).tofile(path)
    assert prep._duplicate_count(path) == 123
    assert prep._duplicate_count(path, budget=4096) == 123  # 8 passes over hash ranges


def test_checksum_thread_runs_a_bounded_lead_and_stops_on_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "CHECKSUM_LEAD", 1)  # lead = workers + 2 blocks, of ~9
    kw = dict(block_size=20_000, progress=False, valid_fraction=0.05, test_fraction=0.05)
    one = prepare([SAMPLE], tmp_path / "w1", workers=1, **kw)
    two = prepare([SAMPLE], tmp_path / "w2", workers=2, **kw)
    assert one["inputs"] == two["inputs"] and one["inputs"][0]["checksum_block_size"] == 20_000

    # A bad record in the second block: the error line comes at once (the checksum thread,
    # waiting for permits, is told to stop), and nothing is left behind.
    text = SAMPLE.read_text()
    cut = text.index("\n>", 30_000) + 1
    bad = write(tmp_path / "bad.fa", text[:cut] + ">x1 broken\nMKV1L\n" + text[cut:])
    start = time.monotonic()
    with pytest.raises(DataError, match=r"bad.fa:\d+: record 'x1': invalid character '1'"):
        prepare([bad], tmp_path / "out", workers=2, **kw)
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out").exists()


def test_a_failing_close_does_not_hide_the_error_in_flight(tmp_path, monkeypatch):
    from proteinperf.data import direct

    def failing_close(self):
        os.close(self.fd) if self.fd >= 0 else None
        self.fd = -1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(direct.AppendFile, "close", failing_close)
    bad = write(tmp_path / "bad.fa", ">a\nMKV\n>b\nMK1V\n")
    with pytest.raises(DataError, match="record 'b': invalid character '1'"):
        prepare([bad], tmp_path / "out", workers=1, progress=False)
    good = write(tmp_path / "good.fa", ">a\nMKV\n")
    with pytest.raises(OSError, match="No space left"):  # and when nothing else failed, it shows
        prepare([good], tmp_path / "out", workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa", "good.fa"]
