import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SEQUENCES, variant_model

from proteinperf.checkpoint import load_model
from proteinperf.cli import main
from proteinperf.data.alphabet import get_alphabet
from proteinperf.inference.likelihood import pseudo_log_probs
from proteinperf.inference.score import COLUMNS, resolve_score_strategy, score_fasta


def framed(seq):
    a = get_alphabet()
    return torch.tensor([a.encode_framed(seq)])


def naive_causal(model, seq):
    tokens = framed(seq)
    with torch.no_grad():
        lp = model(tokens)["logits"].log_softmax(-1)[0]
    return sum(float(lp[i, tokens[0, i + 1]]) for i in range(len(seq)))


def naive_pll(model, seq):
    a = get_alphabet()
    total = 0.0
    for i in range(1, len(seq) + 1):
        tokens = framed(seq)
        true = int(tokens[0, i])
        tokens[0, i] = a.mask_idx
        with torch.no_grad():
            total += float(model(tokens)["logits"].log_softmax(-1)[0, i, true])
    return total


def test_strategies_follow_the_model():
    assert resolve_score_strategy(None, causal=True) == "log-likelihood"
    assert resolve_score_strategy(None, causal=False) == "pseudo-log-likelihood"
    with pytest.raises(ValueError, match="bidirectional model has no exact"):
        resolve_score_strategy("log-likelihood", causal=False)
    with pytest.raises(ValueError, match="causal"):
        resolve_score_strategy("wt-marginals", causal=True)


@pytest.mark.slow
def test_pll_matches_one_mask_at_a_time():
    model = variant_model("favor_relu")
    seq = SEQUENCES["seq3"]
    for budget in (1, 40, 10_000):  # 1, 2 and all masked copies per forward
        assert float(pseudo_log_probs(model, seq, budget).sum()) == pytest.approx(
            naive_pll(model, seq), abs=1e-4
        )


@pytest.mark.parametrize(
    "name,strategy", [("causal", None), ("favor_relu", None), ("softmax", "wt-marginals")]
)
def test_score_fasta_csv(tmp_path, checkpoints, fasta, name, strategy):
    model, _ = load_model(checkpoints[name])
    out = tmp_path / "scores.csv"
    score_fasta(model, fasta, out, strategy=strategy, toks_per_batch=30, quiet=True)
    table = pd.read_csv(out)
    assert tuple(table.columns) == COLUMNS
    assert list(table["id"]) == list(SEQUENCES)
    assert list(table["length"]) == [len(s) for s in SEQUENCES.values()]
    ll = table["log_likelihood"]
    assert (ll < 0).all()
    pd.testing.assert_series_equal(
        table["mean_log_likelihood"], ll / table["length"], check_names=False
    )
    assert table["perplexity"].to_numpy() == pytest.approx(
        np.exp(-table["mean_log_likelihood"].to_numpy())
    )
    seq = SEQUENCES["seq1"]
    if name == "causal":
        assert ll[0] == pytest.approx(naive_causal(model, seq), abs=1e-4)
    elif strategy is None:
        assert ll[0] == pytest.approx(naive_pll(model, seq), abs=1e-4)


def test_cli_score_and_errors(tmp_path, checkpoints, fasta, capsys):
    out = tmp_path / "s.csv"
    assert main(["score", str(checkpoints["causal"]), fasta, str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert len(pd.read_csv(out)) == len(SEQUENCES)
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    assert main(["score", str(checkpoints["causal"]), fasta, str(out), "--quiet"]) == 2
    assert "already exists: add --overwrite" in capsys.readouterr().err
    out.unlink()
    assert main(["score", str(checkpoints["causal"]), str(empty), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty" in err
    assert (
        main(
            [
                "score",
                str(checkpoints["causal"]),
                fasta,
                str(out),
                "--quiet",
                "--strategy",
                "pseudo-log-likelihood",
            ]
        )
        == 2
    )
    assert "causal" in capsys.readouterr().err
