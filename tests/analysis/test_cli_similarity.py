import json
import re

import pytest
from helpers import tiny_model

from proteinperf.checkpoint import save_model
from proteinperf.cli import main

ARGS = ["--max-seqs", "4", "--max-length", "30", "--bootstrap", "20", "--untrained-seeds", "2"]
FILES = {
    "similarity.json",
    "similarity.md",
    "matrices.npz",
    "similarity_matrices.png",
    "similarity_vs_controls.png",
    "embedding_map.png",
}
ENTRY = {"pearson", "spearman", "ci95", "n_pairs"}


def _check_block(block: dict, controls: set) -> None:
    assert set(block) >= {*ENTRY, "controls", "signal", "partial_given_frequency", "ci_method"}
    assert isinstance(block["signal"], bool) and len(block["ci95"]) == 2
    assert set(block["controls"]) == controls
    for control in block["controls"].values():
        assert set(control) >= ENTRY and len(control["ci95"]) == 2
    low, high = block["ci95"]
    assert low is None or low <= high
    assert block["n_pairs"] == 190


@pytest.mark.parametrize(
    "causal", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["masked", "causal"]
)
def test_similarity_end_to_end(tmp_path, sample, capsys, causal):
    checkpoint = save_model(tmp_path / "tiny.pt", tiny_model("favor_relu", causal=causal))
    out = tmp_path / "study"
    argv = ["similarity", str(checkpoint), str(sample), str(out), *ARGS]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    # Stages as they start, then one verdict per measure (what similarity.json says).
    stages = re.findall(r"\] (embeddings|substitutions|attention): (?!r )", captured.err)
    assert stages == ["embeddings", "substitutions", "attention"], captured.err
    assert {p.name for p in out.iterdir()} == FILES
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    assert all(p.stat().st_size < 500_000 for p in out.glob("*.png"))
    study = json.loads((out / "similarity.json").read_text())
    assert set(study) == {"embedding", "substitution", "attention", "settings"}
    _check_block(study["embedding"], {"untrained", "frequency"})
    _check_block(study["substitution"], {"untrained", "frequency", "shuffled"})
    _check_block(study["attention"], {"untrained", "frequency", "shuffled"})
    assert study["embedding"]["lm_head"] is None  # tied to the input embeddings
    assert [s["seed"] for s in study["attention"]["controls"]["untrained"]["seeds"]] == [0, 1]
    assert study["substitution"]["objective"] == ("next-token" if causal else "masked")
    settings = study["settings"]
    assert settings["n_proteins"] == 4 and settings["untrained_seeds"] == [0, 1]
    assert settings["objective"] == ("causal" if causal else "masked")
    assert "| substitution |" in (out / "similarity.md").read_text()
    for name in ("embedding", "substitution", "attention"):
        verdict = "signal" if study[name]["signal"] else "no signal"
        assert re.search(rf"\] {name}: r .*: {verdict}", captured.err), captured.err

    # An existing OUTDIR is refused unless asked; then it is replaced whole.
    assert main(argv) == 2
    assert "exists (use --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--max-seqs", "2", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert json.loads((out / "similarity.json").read_text())["settings"]["n_proteins"] == 2


def test_similarity_refuses_an_input_as_outdir(tmp_path, sample, capsys):
    checkpoint = save_model(tmp_path / "tiny.pt", tiny_model())
    for outdir in (sample, checkpoint, tmp_path):  # tmp_path holds the checkpoint
        argv = ["similarity", str(checkpoint), str(sample), str(outdir), *ARGS, "--overwrite"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and re.search("(is|contains) the input", err), err
    assert sample.is_file() and checkpoint.is_file()
    bad = ["similarity", str(checkpoint), str(sample), str(tmp_path / "x"), "--bootstrap", "3"]
    assert main(bad) == 2 and "at least 10 resamples" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
