"""A FASTA file truncated while `prepare` parses it from a memory map: one error line, exit
status 2, nothing left behind (issue 13, section 2) — not a SIGBUS death."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import importlib
    p = importlib.import_module("proteinperf.data.prepare")

    fasta, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if workers == 1:  # cut while the parser has the block mapped
        original = p._parse

        def truncate_then_parse(data, options, *checksum):
            os.truncate(fasta, 0)  # another process cuts the file while its block is mapped
            return original(data, options, *checksum)

        p._parse = truncate_then_parse
    else:  # cut while the checksum thread has it mapped
        import zlib

        class TruncatingZlib:
            @staticmethod
            def adler32(data):
                os.truncate(fasta, 0)
                return zlib.adler32(data)

        p.zlib = TruncatingZlib
    p.prepare([fasta], out, workers=workers, progress=False)
    print("finished without error")
    """
)


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_while_mapped_is_one_line_and_exit_2(tmp_path, workers):
    fasta = tmp_path / "big.fasta"
    record = "M" + "ACDEFGHIKLMNPQRSTVWY" * 20
    fasta.write_text("".join(f">p{i}\n{record}\n" for i in range(2000)))  # ~0.8 MB, many pages
    out = tmp_path / "corpus"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(fasta), str(out), str(workers)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    expected = f"proteinperf prepare: error: {fasta}: truncated while being read; run prepare again"
    assert lines == [expected]
    assert "finished" not in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.fasta"]  # no corpus, no temp dir
