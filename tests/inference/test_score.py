import numpy as np
import pandas as pd
import pytest
import torch
from bulk_faults import SimulatedKill, failing
from helpers import SEQUENCES, variant_model

from proteinperf.checkpoint import load_model
from proteinperf.cli import main
from proteinperf.data.alphabet import get_alphabet
from proteinperf.inference.common import model_hash
from proteinperf.inference.likelihood import pseudo_log_probs
from proteinperf.inference.score import (
    SCORE_COLUMNS,
    columns,
    forward_passes,
    resolve_score_strategy,
    score_fasta,
)
from proteinperf.inference.shards import ShardStore, shard_dir


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
    summary = score_fasta(model, fasta, out, strategy=strategy, toks_per_batch=30, quiet=True)
    strategy = summary["strategy"]
    total, mean, exp = SCORE_COLUMNS[strategy]
    table = pd.read_csv(out)
    assert tuple(table.columns) == ("id", "length", total, mean, exp, "strategy", "model")
    assert list(table["id"]) == list(SEQUENCES)
    assert list(table["length"]) == [len(s) for s in SEQUENCES.values()]
    assert set(table["strategy"]) == {strategy}
    assert set(table["model"]) == {f"sha256:{model_hash(model)}"}
    ll = table[total]
    assert (ll < 0).all()
    pd.testing.assert_series_equal(table[mean], ll / table["length"], check_names=False)
    assert table[exp].to_numpy() == pytest.approx(np.exp(-table[mean].to_numpy()))
    seq = SEQUENCES["seq1"]
    if name == "causal":
        assert ll[0] == pytest.approx(naive_causal(model, seq), abs=1e-4)
    elif strategy == "pseudo-log-likelihood":
        assert ll[0] == pytest.approx(naive_pll(model, seq), abs=1e-4)


def test_columns_say_what_each_strategy_computed():
    headers = {strategy: columns(strategy) for strategy in SCORE_COLUMNS}
    assert "perplexity" in headers["log-likelihood"]  # only the exact likelihood's is one
    assert "pseudo_perplexity" in headers["pseudo-log-likelihood"]
    assert "wt_marginals_perplexity" in headers["wt-marginals"]
    scores = [set(SCORE_COLUMNS[strategy]) for strategy in SCORE_COLUMNS]
    assert not (scores[0] & scores[1] or scores[0] & scores[2] or scores[1] & scores[2])


@pytest.mark.parametrize("budget", [1, 40, 4096])
def test_forward_passes_are_those_pll_makes(tmp_path, checkpoints, fasta, budget):
    model, _ = load_model(checkpoints["favor_relu"])
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        for strategy in ("pseudo-log-likelihood", "wt-marginals"):
            calls.clear()
            out = tmp_path / f"{strategy}-{budget}.csv"
            score_fasta(model, fasta, out, strategy=strategy, toks_per_batch=budget, quiet=True)
            lengths = [len(s) for s in SEQUENCES.values()]
            assert len(calls) == forward_passes(strategy, lengths, budget)
    finally:
        hook.remove()


def test_pll_journals_every_record_and_resumes(tmp_path, checkpoints, fasta, bulk_path):
    """One record per batch: the progress bar (and --resume) move after every protein."""
    model, _ = load_model(checkpoints["favor_relu"])
    reference, out = tmp_path / "ref.csv", tmp_path / "run.csv"
    score_fasta(model, fasta, reference, quiet=True)
    with failing(after_batches=1), pytest.raises(SimulatedKill):
        score_fasta(model, fasta, out, quiet=True)
    store = ShardStore(shard_dir(out))
    assert len(store.done()) == 1  # all four fit one batch of the token budget
    summary = score_fasta(model, fasta, out, quiet=True, resume=True)
    assert sum(summary["rank_residues"]) == summary["residues"] - len(SEQUENCES["seq1"])
    assert out.read_bytes() == reference.read_bytes()


def test_cli_states_the_cost_first_and_records_the_model(tmp_path, checkpoints, fasta, capsys):
    out = tmp_path / "s.csv"
    checkpoint = str(checkpoints["favor_relu"])
    assert main(["score", checkpoint, fasta, str(out), "--toks-per-batch", "40"]) == 0
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    residues = sum(len(s) for s in SEQUENCES.values())
    passes = forward_passes("pseudo-log-likelihood", [len(s) for s in SEQUENCES.values()], 40)
    assert first.startswith(f"score: 4 records ({residues} residues), pseudo-log-likelihood")
    assert f"~{passes} forward passes" in first and "--strategy wt-marginals needs ~" in first
    table = pd.read_csv(out)
    assert set(table["model"]) == {checkpoint} and "pseudo_perplexity" in table.columns
    assert main(["score", checkpoint, fasta, str(out), "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


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
