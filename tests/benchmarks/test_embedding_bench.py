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


@pytest.mark.slow
def test_bulk_rows_time_the_forward_of_a_real_cli_run(tmp_path):
    fasta = embedding.write_records(tmp_path / "in.fasta", [("a", "MKTAYIAKQR"), ("b", "GSHM")])
    run = embedding.bulk_case(fasta, tmp_path / "e.h5")
    assert run["status"] == "ok", run
    assert run["forward_calls"] == 1 and 0 < run["forward_s"] < run["wall_s"]
    assert run["forward_share"] == pytest.approx(run["forward_s"] / run["wall_s"])
    assert 0 < run["first_batch_s"] < run["wall_s"]
    big = embedding.write_records(tmp_path / "big.fasta", [("a", "MKTAYIAKQR")], copies=50)
    first = embedding.bulk_case(big, tmp_path / "big.h5", stop_after_first=True)
    assert first["status"] == "ok" and first["forward_calls"] == 1, first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.fasta", "in.fasta"]
    first.update(records=50)
    run.update(records=2)
    assert 0 < run["forward_cpu_s"] < run["cpu_s"] and 0 < run["forward_cpu_share"] < 1
    table, checks = embedding.bulk_markdown({"run": run, "first": first, "small": run})
    values = [c["value"] for c in checks]
    assert values == [run["forward_share"], first["first_batch_s"], run["wall_s"]]
    assert "| embed, short records | 2 |" in table and "| first batch only | 50 |" in table
    assert "| embed, small input (in process) | 2 |" in table
