import json

import numpy as np
import pytest

from proteinperf.cli import main

ARGS = ["--max-seqs", "4", "--max-length", "40", "--layers", "1", "2", "--heads", "1", "3"]
FILES = {
    "attention_maps.png",
    "attention_maps_control.png",
    "favor_vs_exact.png",
    "approximation_error.png",
    "similarity_vs_blosum62.png",
    "similarity_scatter.png",
    "pair_attention_vs_blosum62.png",
    "pair_attention_scatter.png",
    "matrices.npz",
    "summary.json",
}


@pytest.mark.slow
def test_attention_end_to_end(tmp_path, tiny_checkpoint, sample, capsys):
    out = tmp_path / "report"
    argv = [
        "attention",
        str(tiny_checkpoint),
        str(sample),
        str(out),
        *ARGS,
        "--protein",
        "HBA_HUMAN",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert {p.name for p in out.iterdir()} == FILES
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protein"] == "sp|P69905|HBA_HUMAN"
    assert summary["layers"] == [1, 2] and summary["heads"] == [1, 3]
    assert summary["layer_numbering"] == "esm"
    for who in ("model", "control"):
        assert summary[who]["n_sequences"] == 4
        assert set(summary[who]["similarity_vs_blosum62"]) >= {"pearson", "spearman", "n_pairs"}
        tv = summary[who]["approximation_error"]["tv"]["per_layer_head"]
        assert (
            np.array(tv).shape == (2, 2)
            and 0 <= summary[who]["approximation_error"]["tv"]["mean"] <= 1
        )
    matrices = np.load(out / "matrices.npz")
    assert matrices["model_similarity"].shape == (20, 20)
    assert matrices["model_head_fractions"].shape == (4, 20)
    assert "".join(matrices["amino_acids"]) == "ACDEFGHIKLMNPQRSTVWY"

    # A finished report is not overwritten unless asked; then it is replaced whole.
    assert main(argv) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    again = [*argv, "--overwrite", "--max-seqs", "2", "--max-length", "12", "--layers", "1"]
    assert main([*again, "--heads", "-1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["n_sequences"] == 2 and summary["heads"] == [4]


def test_attention_user_errors_are_one_line(tmp_path, tiny_checkpoint, sample, capsys):
    cases = [
        (["--layers", "7"], "layer 7 does not exist: this model has layers 1..2"),
        (["--layers", "0"], "layer 0 is the token embeddings, which have no attention"),
        (["--protein", "NOPE_HUMAN"], "protein 'NOPE_HUMAN' not found"),
        (["--threshold", "1.5"], "threshold must be in [0, 1)"),
        (["--heads", "0"], "heads are numbered 1..4 (or -4..-1 from the end), got [0]"),
        (["--heads", "5"], "heads are numbered 1..4 (or -4..-1 from the end), got [5]"),
    ]
    for extra, message in cases:
        argv = [
            "attention",
            str(tiny_checkpoint),
            str(sample),
            str(tmp_path / "r"),
            "--max-seqs",
            "2",
            "--max-length",
            "20",
            *extra,
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not (tmp_path / "r").exists()
    assert main(["attention", str(tmp_path / "missing.pt"), str(sample), str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_attention_checks_records_past_max_seqs(tmp_path, tiny_checkpoint, sample, capsys):
    fasta = tmp_path / "broken.fasta"
    fasta.write_text(sample.read_text() + ">late\nMKV1L\n")
    lines = fasta.read_text().count("\n")
    argv = ["attention", str(tiny_checkpoint), str(fasta), str(tmp_path / "r"), "--max-seqs", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"broken.fasta:{lines}: record 'late': invalid character '1'" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_attention_bootstrap_study(tmp_path, tiny_checkpoint, sample):
    out = tmp_path / "report"
    argv = ["attention", str(tiny_checkpoint), str(sample), str(out), "--max-seqs", "5"]
    assert main([*argv, "--max-length", "30", "--bootstrap", "20"]) == 0
    assert {"blosum_study.json", "study_vs_blosum62.png", "study_per_layer.png"} <= {
        p.name for p in out.iterdir()
    }
    study = json.loads((out / "blosum_study.json").read_text())
    assert study["n_sequences"] == 5 and study["n_heads"] == 2 * 4
    for condition in ("model", "untrained", "shuffled"):
        result = study[condition]
        assert set(result) >= {"pearson", "ci95", "pair_attention", "per_layer"}
        assert len(result["ci95"]) == 2 and len(result["per_layer"]) == 2
        assert [row["layer"] for row in result["per_layer"]] == [1, 2]  # as embed numbers them
        low, high = result["ci95"]
        if low is not None:
            assert low <= high
    assert isinstance(study["signal"], bool) and study["layer_numbering"] == "esm"


def test_attention_says_what_it_does_and_found(tmp_path, tiny_checkpoint, sample, capsys):
    """Default device auto (as every command), a first line, progress, and a summary."""
    out = tmp_path / "report"
    argv = ["attention", str(tiny_checkpoint), str(sample), str(out), "--max-seqs", "3"]
    assert main([*argv, "--max-length", "40", "--layers", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    err = captured.err
    assert err.startswith(f"attention: {tiny_checkpoint} (favor_softmax, 2 layers x 4 heads)")
    assert "on 3 sequences" in err and "device cpu" in err  # auto: no GPU here
    summary = json.loads((out / "summary.json").read_text())
    r = summary["model"]["similarity_vs_blosum62"]["pearson"]
    assert f"wrote {out}/ in " in err and "8 figures" in err
    assert f"model {r:.3f}, untrained control" in err
    tv = summary["model"]["approximation_error"]["tv"]["mean"]
    assert f"mean total variation per query {tv:.3f}" in err
    assert main([*argv, "--max-length", "12", "--layers", "1", "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_attention_bootstrap_reuses_the_reports_control(
    tmp_path, tiny_checkpoint, fasta, monkeypatch
):
    """--bootstrap's BLOSUM62 study uses the report's untrained control (same seed), built once."""
    import importlib

    from proteinperf.analysis.report import write_attention_report

    # the modules (the package's names of the same spelling are their functions)
    attention_maps = importlib.import_module("proteinperf.analysis.attention_maps")
    blosum_module = importlib.import_module("proteinperf.analysis.blosum_study")
    seeds = []
    original = attention_maps.untrained_control

    def counted(config, seed=0):
        seeds.append(seed)
        return original(config, seed)

    monkeypatch.setattr(attention_maps, "untrained_control", counted)
    monkeypatch.setattr(blosum_module, "untrained_control", counted)
    out = write_attention_report(
        tiny_checkpoint, fasta, tmp_path / "r", max_seqs=3, max_length=20, bootstrap=10, seed=2
    )
    assert seeds == [2]
    assert json.loads((out / "blosum_study.json").read_text())["untrained_seeds"][0]["seed"] == 2
