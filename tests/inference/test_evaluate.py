"""`evaluate` on FASTA files: fixed masking, the unigram baseline, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import SEQUENCES, variant_model, write_fasta

from proteinperf.data.alphabet import get_alphabet
from proteinperf.inference.evaluate import (
    evaluate,
    unigram_log_probs_from,
)


def test_masked_and_causal_metrics_on_a_fasta(fasta):
    bid = evaluate(variant_model("favor_relu"), fasta, seed=3)
    again = evaluate(variant_model("favor_relu"), fasta, seed=3, toks_per_batch=20)
    other = evaluate(variant_model("favor_relu"), fasta, seed=4)
    assert bid["objective"] == "mlm" and bid["sequences"] == len(SEQUENCES)
    assert bid["loss"] == pytest.approx(again["loss"], abs=1e-5)  # batching does not matter
    assert (
        bid["targets"] == again["targets"]
        and bid["targets"] != other["targets"]
        or (bid["loss"] != other["loss"])
    )
    assert bid["perplexity"] == pytest.approx(math.exp(bid["loss"]))
    assert 0.0 <= bid["accuracy"] <= 1.0 and "unigram" not in bid

    causal = evaluate(variant_model("causal"), fasta)
    residues = sum(len(s) for s in SEQUENCES.values())
    assert causal["objective"] == "clm"
    assert causal["targets"] == residues + len(SEQUENCES)  # every residue and the final <eos>


def test_unigram_baseline_and_max_length(fasta, tmp_path):
    a = get_alphabet()
    scores = torch.zeros(33)
    scores[a.tok_to_idx["L"]] = 4.0  # a baseline that always predicts leucine
    log_p = torch.log_softmax(scores, dim=0)
    result = evaluate(variant_model("favor_relu"), fasta, unigram_log_probs=log_p, max_length=8)
    u = result["unigram"]
    assert u["loss"] > 0 and 0 <= u["accuracy"] <= 1
    # From a FASTA: frequencies of all of it; causal adds one <eos> per sequence.
    from_file = unigram_log_probs_from(fasta, causal=True)
    assert from_file.shape == (33,) and from_file.exp().sum() == pytest.approx(1.0, abs=1e-5)
    assert from_file[a.eos_idx] > unigram_log_probs_from(fasta, causal=False)[a.eos_idx]
    # Crops keep the first max_length tokens (<cls>, residues, <eos>): fewer causal targets.
    short = evaluate(variant_model("causal"), fasta, max_length=8)
    assert short["targets"] == sum(min(len(s), 6) + 1 for s in SEQUENCES.values())  # + <eos>


@pytest.mark.slow
def test_cli_errors_are_one_line(checkpoints, tmp_path, fasta):
    run = [sys.executable, "-m", "proteinperf.cli", "evaluate"]
    missing = subprocess.run(
        [*run, str(checkpoints["favor_relu"]), str(tmp_path / "no.fasta")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no.fasta" in missing.stderr
    bad = write_fasta(tmp_path / "bad.fasta", {"ok": "MKV", "broken": "MK1V"})
    out = tmp_path / "m.json"
    done = subprocess.run(
        [*run, str(checkpoints["favor_relu"]), bad, "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "bad.fasta:4" in done.stderr and not out.exists()
    # A checkpoint without frequencies: the baseline comes from --unigram-from.
    done = subprocess.run(
        [
            *run,
            str(checkpoints["causal"]),
            fasta,
            "--unigram-from",
            fasta,
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    saved = json.loads(out.read_text())
    assert saved["objective"] == "clm" and saved["unigram_source"] == fasta
