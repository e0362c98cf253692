import pandas as pd
import pytest
import torch

from proteinperf.cli import main
from proteinperf.data.alphabet import get_alphabet
from proteinperf.inference.likelihood import causal_log_probs, pseudo_log_probs
from proteinperf.inference.mutations import (
    Mutation,
    apply,
    parse_mutant,
    resolve_strategy,
    score_variants,
)

from .conftest import tiny_model

WT = "MKTAYIAKQRQISF"  # M1 K2 T3 A4 Y5 I6 A7 K8 Q9 R10 ...


def masked_row(model, seq, index):
    a = get_alphabet()
    tokens = torch.tensor([a.encode_framed(seq)])
    tokens[0, index + 1] = a.mask_idx
    with torch.no_grad():
        return model(tokens)["logits"].log_softmax(-1)[0, index + 1]


def test_parse_mutant():
    assert parse_mutant("K2R", WT) == (Mutation("K", 1, "R"),)
    assert parse_mutant("k2r:A4G", WT) == (Mutation("K", 1, "R"), Mutation("A", 3, "G"))
    assert parse_mutant("K12R", WT, offset=11) == (Mutation("K", 1, "R"),)
    assert parse_mutant("WT", WT) == ()


@pytest.mark.parametrize(
    "text,message",
    [
        ("K3R", "wild type K does not match the sequence, which has T at position 3"),
        ("K20R", "outside the sequence: positions run from 1 to 14"),
        ("K0R", "outside the sequence"),
        ("K2", "cannot parse mutation 'K2'"),
        ("K2J", "'J' is not an amino acid"),
        ("K2R:K2A", "position 2 is mutated twice"),
    ],
)
def test_parse_mutant_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_mutant(text, WT, where="in.csv:5")


def test_strategy_defaults():
    assert resolve_strategy(None, causal=False) == "masked-marginals"
    assert resolve_strategy(None, causal=True) == "log-likelihood-ratio"
    with pytest.raises(ValueError, match="causal"):
        resolve_strategy("masked-marginals", causal=True)
    with pytest.raises(ValueError, match="needs a causal model"):
        resolve_strategy("log-likelihood-ratio", causal=False)


def test_masked_marginals_and_multi_mutants_sum_singles():
    model = tiny_model("favor_softmax")
    idx = get_alphabet().tok_to_idx
    variants = [parse_mutant(t, WT) for t in ("K2R", "A4G", "K2R:A4G", "WT", "K2K")]
    scores = score_variants(model, WT, variants, toks_per_batch=20)
    row = masked_row(model, WT, 1)
    assert scores[0] == pytest.approx(float(row[idx["R"]] - row[idx["K"]]), abs=1e-5)
    assert scores[2] == pytest.approx(scores[0] + scores[1], abs=1e-5)
    assert scores[3] == 0.0 and scores[4] == pytest.approx(0.0)


def test_wt_marginals_one_pass():
    model = tiny_model("favor_relu")
    idx = get_alphabet().tok_to_idx
    tokens = torch.tensor([get_alphabet().encode_framed(WT)])
    with torch.no_grad():
        lp = model(tokens)["logits"].log_softmax(-1)[0]
    (score,) = score_variants(model, WT, [parse_mutant("Y5W", WT)], strategy="wt-marginals")
    assert score == pytest.approx(float(lp[5, idx["W"]] - lp[5, idx["Y"]]), abs=1e-5)


def test_pseudo_ppl_and_llr_are_sequence_differences():
    variants = [parse_mutant("K2R:A4G", WT)]
    mutant = apply(WT, variants[0])
    bid = tiny_model("favor_relu")
    (pppl,) = score_variants(bid, WT, variants, strategy="pseudo-ppl", toks_per_batch=64)
    expected = float(pseudo_log_probs(bid, mutant, 64).sum() - pseudo_log_probs(bid, WT, 64).sum())
    assert pppl == pytest.approx(expected, abs=1e-4)
    causal = tiny_model("causal")
    (llr,) = score_variants(causal, WT, variants)
    ll_mut, ll_wt = causal_log_probs(causal, [mutant, WT])
    assert llr == pytest.approx(float(ll_mut.sum() - ll_wt.sum()), abs=1e-4)


def write_csv(path, mutants):
    pd.DataFrame(
        {
            "mutant": mutants,
            "DMS_score": ["0.10", "1e-3", "NA"][: len(mutants)],
            "note": ["a", "", "c"][: len(mutants)],
        }
    ).to_csv(path, index=False)
    return str(path)


def test_cli_keeps_columns_and_names_score(tmp_path, checkpoints, capsys):
    csv_in = write_csv(tmp_path / "in.csv", ["K2R", "A4G:Y5W", "WT"])
    out = tmp_path / "out.csv"
    ckpt = str(checkpoints["favor_softmax"])
    assert (
        main(
            [
                "score-mutations",
                ckpt,
                "--sequence",
                WT,
                "--mutations",
                csv_in,
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["mutant", "DMS_score", "note", "favor_softmax_masked-marginals"]
    assert list(table["DMS_score"]) == ["0.10", "1e-3", "NA"]  # untouched text
    assert list(table["note"]) == ["a", "", "c"]
    fasta = tmp_path / "wt.fasta"
    fasta.write_text(f">wt\n{WT}\n")
    assert (
        main(
            [
                "score-mutations",
                ckpt,
                "--fasta",
                str(fasta),
                "--mutations",
                csv_in,
                "--out",
                str(out),
                "--quiet",
                "--strategy",
                "wt-marginals",
                "--score-col",
                "s",
            ]
        )
        == 0
    )
    assert "s" in pd.read_csv(out).columns


def test_cli_mismatch_names_the_row(tmp_path, checkpoints, capsys):
    csv_in = write_csv(tmp_path / "in.csv", ["K2R", "K3R"])
    out = tmp_path / "out.csv"
    assert (
        main(
            [
                "score-mutations",
                str(checkpoints["causal"]),
                "--sequence",
                WT,
                "--mutations",
                csv_in,
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "in.csv:3" in err and "K3R" in err and "has T at position 3" in err
    assert not out.exists()
    assert (
        main(
            [
                "score-mutations",
                str(checkpoints["causal"]),
                "--sequence",
                WT,
                "--mutations",
                csv_in,
                "--out",
                str(out),
                "--mutation-col",
                "nope",
            ]
        )
        == 2
    )
    assert "no column 'nope'" in capsys.readouterr().err
