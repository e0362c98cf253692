"""Embedding benchmark, bulk rows (issue 15): a tiny corpus through the real CLI path."""

from __future__ import annotations

import dataclasses

import pytest

from proteinperf.benchmarks import embedding


@pytest.mark.slow
def test_corpus_rows_run_the_cli_and_measure(tmp_path, monkeypatch):
    fasta = tmp_path / "corpus.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nGSHMLEDPVDAFQ\n>c\nMAD\n>d\nWWYCPN\n")
    monkeypatch.setattr(embedding, "corpus_path", lambda: fasta)
    tiny = dict(embedding.CORPUS_MODEL, d_model=16, n_heads=2, d_ff=32, nb_features=8)
    monkeypatch.setattr(embedding, "CORPUS_MODEL", tiny)
    settings = dataclasses.replace(embedding.QUICK, corpus_records=3, corpus_processes=(1,))
    (row,) = embedding.run_corpus(settings)
    assert row["status"] == "ok", row
    assert row["records"] == 3 and row["residues"] == 10 + 13 + 3
    assert row["wall_s"] > 0 and row["residues_per_s"] == pytest.approx(26 / row["wall_s"])
    assert 0.05 < row["peak_total_gib"] < 8 and row["peak_process_gib"] <= row["peak_total_gib"]
    table = embedding.corpus_markdown([row, {"status": "error", "processes": 2}], settings)
    lines = table.splitlines()
    assert row["threads"] == 2 and lines[-2].startswith("| 1 | 2 | 3 | 26 |")
    assert lines[-1].startswith("| 2 | –")
