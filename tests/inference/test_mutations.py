import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import variant_model

from proteinperf.cli import main
from proteinperf.data.alphabet import get_alphabet
from proteinperf.inference.likelihood import causal_log_probs, pseudo_log_probs
from proteinperf.inference.mutations import (
    Mutation,
    apply,
    parse_mutant,
    resolve_mutation_strategy,
    resolve_window,
    score_variants,
)
from proteinperf.inference.proteingym import write_summary

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
    assert resolve_mutation_strategy(None, causal=False) == "masked-marginals"
    assert resolve_mutation_strategy(None, causal=True) == "log-likelihood-ratio"
    with pytest.raises(ValueError, match="causal"):
        resolve_mutation_strategy("masked-marginals", causal=True)
    with pytest.raises(ValueError, match="needs a causal model"):
        resolve_mutation_strategy("log-likelihood-ratio", causal=False)


def test_masked_marginals_and_multi_mutants_sum_singles():
    model = variant_model("favor_softmax")
    idx = get_alphabet().tok_to_idx
    variants = [parse_mutant(t, WT) for t in ("K2R", "A4G", "K2R:A4G", "WT", "K2K")]
    scores = score_variants(model, WT, variants, toks_per_batch=20)
    row = masked_row(model, WT, 1)
    assert scores[0] == pytest.approx(float(row[idx["R"]] - row[idx["K"]]), abs=1e-5)
    assert scores[2] == pytest.approx(scores[0] + scores[1], abs=1e-5)
    assert scores[3] == 0.0 and scores[4] == pytest.approx(0.0)


def test_wt_marginals_one_pass():
    model = variant_model("favor_relu")
    idx = get_alphabet().tok_to_idx
    tokens = torch.tensor([get_alphabet().encode_framed(WT)])
    with torch.no_grad():
        lp = model(tokens)["logits"].log_softmax(-1)[0]
    (score,) = score_variants(model, WT, [parse_mutant("Y5W", WT)], strategy="wt-marginals")
    assert score == pytest.approx(float(lp[5, idx["W"]] - lp[5, idx["Y"]]), abs=1e-5)


def test_pseudo_ppl_and_llr_are_sequence_differences():
    variants = [parse_mutant("K2R:A4G", WT)]
    mutant = apply(WT, variants[0])
    bid = variant_model("favor_relu")
    (pppl,) = score_variants(bid, WT, variants, strategy="pseudo-ppl", toks_per_batch=64)
    expected = float(pseudo_log_probs(bid, mutant, 64).sum() - pseudo_log_probs(bid, WT, 64).sum())
    assert pppl == pytest.approx(expected, abs=1e-4)
    causal = variant_model("causal")
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
                "--overwrite",
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


# ----------------------------------------------------------------------------- ProteinGym

GYM_WT = "MKTAYIAKQRQISFVKSHFSRQ"  # 22 residues
GYM_MUTANTS = ["M1A", "K2R", "T3S", "A4G:Y5W", "I6L", "K8E:Q9N:R10K", "S13T", "F14Y", "R21K"]


def write_gym_assay(path, mutants=GYM_MUTANTS, wild_type=GYM_WT, seed=0):
    """A substitution file in ProteinGym's layout: mutant, mutated_sequence, DMS_score,
    DMS_score_bin (1 = fit)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=len(mutants))
    cutoff = np.median(scores)
    pd.DataFrame(
        {
            "mutant": mutants,
            "mutated_sequence": [apply(wild_type, parse_mutant(m, wild_type)) for m in mutants],
            "DMS_score": [f"{x:.6f}" for x in scores],
            "DMS_score_bin": [str(int(x > cutoff)) for x in scores],
        }
    ).to_csv(path, index=False)
    return path


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def run_cli(*args):
    return main(["score-mutations", *map(str, args), "--quiet"])


def test_proteingym_file_wild_type_from_mutated_sequence_and_metrics(tmp_path, checkpoints, capsys):
    from scipy.stats import spearmanr

    assay = write_gym_assay(tmp_path / "ASSAY_1.csv")
    ckpt = checkpoints["favor_softmax"]
    assert run_cli(ckpt, "--mutations", assay, "--out", tmp_path / "out.csv") == 0
    printed = capsys.readouterr().out
    out = pd.read_csv(tmp_path / "out.csv")
    col = "favor_softmax_masked-marginals"
    assert list(out.columns) == ["mutant", "mutated_sequence", "DMS_score", "DMS_score_bin", col]
    # the same scores as with the wild type given explicitly
    assert (
        run_cli(ckpt, "--mutations", assay, "--out", tmp_path / "b.csv", "--sequence", GYM_WT) == 0
    )
    np.testing.assert_allclose(pd.read_csv(tmp_path / "b.csv")[col], out[col], atol=1e-6)
    summary = json.loads((tmp_path / "out.json").read_text())
    rho = spearmanr(out[col], out["DMS_score"]).statistic
    auc = brute_force_auc(out[col].tolist(), out["DMS_score_bin"].tolist())
    assert summary["metrics"]["spearman"] == pytest.approx(rho, abs=1e-9)
    assert summary["metrics"]["auc"] == pytest.approx(auc, abs=1e-9)
    assert summary["metrics"]["n"] == len(GYM_MUTANTS)
    assert f"spearman {rho:.4f}" in printed and f"auc {auc:.4f}" in printed


def test_proteingym_inconsistent_mutated_sequence_names_the_row(tmp_path, checkpoints, capsys):
    assay = write_gym_assay(tmp_path / "a.csv")
    table = pd.read_csv(assay, dtype=str)
    table.loc[3, "mutated_sequence"] = "W" + table.loc[3, "mutated_sequence"][1:]
    table.to_csv(assay, index=False)
    out = tmp_path / "out.csv"
    assert run_cli(checkpoints["favor_relu"], "--mutations", assay, "--out", out) == 2
    err = capsys.readouterr().err
    assert "a.csv:5" in err and "A4G:Y5W" in err and not out.exists()
    no_wt = write_csv(tmp_path / "plain.csv", ["K2R"])
    assert run_cli(checkpoints["favor_relu"], "--mutations", no_wt, "--out", out) == 2
    assert "no wild type" in capsys.readouterr().err


def write_reference(path, assays: dict):
    rows = [
        {
            "DMS_index": i,
            "DMS_id": dms_id,
            "DMS_filename": f"{dms_id}.csv",
            "UniProt_ID": dms_id.rsplit("_", 1)[0],
            "target_seq": wt,
            "seq_len": len(wt),
            "DMS_total_number_mutants": n,
        }
        for i, (dms_id, (wt, n)) in enumerate(assays.items())
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_proteingym_reference_run_is_resumable(tmp_path, checkpoints, capsys):
    dms_dir = tmp_path / "DMS_ProteinGym_substitutions"
    dms_dir.mkdir()
    other_wt = "GSHMLEDPVDAFQ"
    write_gym_assay(dms_dir / "PROT1_Smith_2020.csv")
    write_gym_assay(dms_dir / "PROT2_Lee_2021.csv", ["G1A", "H3K", "L5I:E6D", "Q13E"], other_wt, 1)
    reference = write_reference(
        tmp_path / "DMS_substitutions.csv",
        {"PROT1_Smith_2020": (GYM_WT, 9), "PROT2_Lee_2021": (other_wt, 4)},
    )
    out = tmp_path / "scores"
    args = (checkpoints["softmax"], "--reference", reference, "--dms-dir", dms_dir, "--out", out)
    assert run_cli(*args, "--strategy", "wt-marginals") == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary["DMS_id"].tolist() == ["PROT1_Smith_2020", "PROT2_Lee_2021", "mean"]
    assert summary["spearman"].iloc[2] == pytest.approx(
        summary["spearman"].iloc[:2].mean(), abs=1e-4
    )
    assert "0 resumed" in capsys.readouterr().out
    # A finished assay is read back, not scored again: edited scores show in the new summary.
    col = "softmax_wt-marginals"
    first = pd.read_csv(out / "PROT1_Smith_2020.csv")
    first[col] = first["DMS_score"]
    first.to_csv(out / "PROT1_Smith_2020.csv", index=False)
    (out / "PROT2_Lee_2021.csv").unlink()
    assert run_cli(*args, "--strategy", "wt-marginals") == 0
    assert "1 resumed" in capsys.readouterr().out
    result = json.loads((out / "summary.json").read_text())
    assert result["assays"][0]["spearman"] == pytest.approx(1.0)
    assert result["assays"][1]["spearman"] == pytest.approx(summary["spearman"].iloc[1], abs=1e-4)
    assert run_cli(checkpoints["softmax"], "--reference", reference, "--out", out) == 2
    assert "--dms-dir" in capsys.readouterr().err


def test_proteingym_summary_csv_writes_counts_as_integers(tmp_path):
    result = {
        "assays": [{"DMS_id": "A_1", "n": 40, "spearman": 0.25, "auc": 0.6}],
        "mean_spearman": 0.25,
        "mean_auc": 0.6,
    }
    write_summary(tmp_path, result)
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines == ["DMS_id,n,spearman,auc", "A_1,40,0.2500,0.6000", "mean,,0.2500,0.6000"]


@pytest.mark.slow
def test_windows_score_each_position_in_its_centred_window():
    model = variant_model("favor_softmax")
    long_wt = GYM_WT * 2  # 44 residues
    variants = [parse_mutant(t, long_wt) for t in ("M1A", "K30R", "Q44E", "M1A:Q44E")]
    windowed = score_variants(model, long_wt, variants, window=10, toks_per_batch=64)
    idx = get_alphabet().tok_to_idx
    # K30 (index 29) sits in residues 24..33; M1 in 0..9; Q44 (index 43) in 34..43
    row = masked_row(model, long_wt[24:34], 29 - 24)
    assert windowed[1] == pytest.approx(float(row[idx["R"]] - row[idx["K"]]), abs=1e-5)
    row = masked_row(model, long_wt[:10], 0)
    assert windowed[0] == pytest.approx(float(row[idx["A"]] - row[idx["M"]]), abs=1e-5)
    assert windowed[3] == pytest.approx(windowed[0] + windowed[2], abs=1e-5)
    whole = score_variants(model, long_wt, variants, toks_per_batch=64)
    assert abs(whole[1] - windowed[1]) > 1e-4  # the window changes the context
    assert resolve_window(variant_model("softmax"), "auto") == 1022
    assert resolve_window(model, "auto") is None and resolve_window(model, 0) is None
