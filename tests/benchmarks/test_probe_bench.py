"""Function probe benchmark: metrics, features and split by hand; a tiny end-to-end run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from proteinperf.benchmarks import probe
from proteinperf.checkpoint import save_model
from proteinperf.model import ModelConfig, PerformerLM


def test_composition_counts_residues_and_overlapping_pairs():
    x = probe.composition(["AACX", "W"])
    a, c, w = (probe.AMINO_ACIDS.index(r) for r in "ACW")
    np.testing.assert_allclose(x[0, [a, c]], [2 / 3, 1 / 3])
    assert x[0, :20].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(x[0, [20 + a * 20 + a, 20 + a * 20 + c]], [0.5, 0.5])  # AA, AC
    assert x[0, 20:].sum() == pytest.approx(1.0)  # C-X left out
    assert x[1, w] == 1.0 and x[1, 20:].sum() == 0.0


def test_fmax_and_macro_auc_by_hand():
    y = np.array([[1, 1], [1, 0]])
    scores = np.array([[0.8, 0.3], [0.5, 0.9]])
    # tau <= 0.3: precisions 1 and 1/2, recalls 1 and 1 -> F = 2*.75/1.75
    assert probe.fmax(y, scores) == pytest.approx(6 / 7)
    assert probe.fmax(np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.2], [0.6, 0.7]])) == 1.0
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.1, 0.8], [0.2, 0.7], [0.3, 0.9]])
    auc, n = probe.macro_auc(y, scores)
    assert n == 2 and auc == pytest.approx((0.75 + 0.5) / 2)  # term 0: 3 of 4 pairs right


def test_cluster_split_keeps_clusters_whole_and_labels_from_train():
    ids = [f"p{i}" for i in range(400)]
    clusters = {i: f"p{int(i[1:]) // 4 * 4}" for i in ids}  # clusters of 4
    test = probe.cluster_split(ids, clusters, 0.25, seed=0)
    for rep in set(clusters.values()):
        sides = {bool(t) for i, t in zip(ids, test) if clusters[i] == rep}
        assert len(sides) == 1
    assert 0.15 < test.mean() < 0.35
    labels = [{"a", "b"}, {"a"}, {"c"}, {"c"}, {"c"}]
    train = np.array([True, True, True, False, False])
    y, terms = probe.label_matrix(labels, train, 2)
    assert terms == ["a", "b"]  # c is frequent only in test
    assert y.tolist() == [[1, 1], [1, 0], [0, 0], [0, 0], [0, 0]]


def test_probe_end_to_end_tiny(tmp_path, monkeypatch):
    try:
        probe.data_file(probe.FASTA), probe.data_file(probe.LABELS)
        from proteinperf.data.cluster import find_mmseqs

        find_mmseqs()
    except Exception as err:  # no shared data or no MMseqs2 on this machine
        pytest.skip(f"probe data or mmseqs unavailable: {err}")
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, nb_features=8, dropout=0.0)
    checkpoint = save_model(tmp_path / "tiny.ckpt", PerformerLM(config))
    monkeypatch.setenv(probe.CHECKPOINT_ENV, str(checkpoint))
    settings = dataclasses.replace(probe.QUICK, n_proteins=120, n_terms=3, max_residues=64)
    result = probe.probe(settings, tmp_path / "work", probe.find_checkpoints())
    assert result["n_train"] + result["n_test"] == 120 and result["n_test"] > 0
    assert len(result["terms"]) == 3
    names = [r["features"] for r in result["rows"]]
    assert names[:2] == ["naive (train term frequency)", "composition (AA + dipeptide)"]
    assert names[2] == "tiny.ckpt" and len(names) == 4
    assert names[3] == "untrained (favor_relu, d=16 x 1, bidirectional)"
    assert [r["dim"] for r in result["rows"]] == [0, 420, 16, 16]
    for row in result["rows"]:
        assert 0.0 <= row["fmax"] <= 1.0
        assert 0.0 <= row["macro_auc"] <= 1.0
    assert result["rows"][0]["macro_auc"] == 0.5
    text = probe._markdown(result, settings)
    assert "| composition (AA + dipeptide) | 420 |" in text and str(checkpoint) in text
