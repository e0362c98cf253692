"""Function probe: does a mean embedding predict GO biological-process terms?

Proteins of swissprot_20k (GO BP labels beside them) are clustered with MMseqs2 and whole
clusters go to train or test, so no test protein has a relative (>= ``identity`` identity,
80% coverage) in train. For the ``n_terms`` most frequent terms in train, one logistic
regression per term (standardised features) is fitted on train and scored on test:
macro ROC-AUC over terms, and CAFA's protein-centric Fmax over the same terms. Features:

- each model: mean over residues of the last layer (checkpoints from
  $PROTEINPERF_PROBE_CHECKPOINT, several joined by ':', else the newest
  outputs/train/runs/*/checkpoints/best.ckpt);
- untrained: each model's config freshly initialised (what the architecture alone gives);
- composition: amino-acid (20) + dipeptide (400) frequencies;
- naive: every protein gets each term's train frequency (CAFA's naive baseline; AUC 0.5).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proteinperf.benchmarks._measure import machine_info, markdown_table

ROOT = Path(__file__).resolve().parents[2]
DATA_DIRS = (ROOT / "data", ROOT.parent / "shared" / "data")  # the repo's, then ../shared
FASTA = "swissprot_20k.fasta.gz"
LABELS = "swissprot_20k_go_bp.tsv.gz"
CHECKPOINT_ENV = "PROTEINPERF_PROBE_CHECKPOINT"
RUNS_GLOB = "outputs/train/runs/*/checkpoints/best.ckpt"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
THRESHOLDS = tuple(np.round(np.linspace(0.01, 0.99, 99), 2))  # CAFA's τ grid


@dataclass(frozen=True)
class Settings:
    n_proteins: int | None = None  # None = all 20,000
    n_terms: int = 50
    identity: float = 0.3
    cluster_method: str = "cluster"  # MMseqs2's sensitive clustering; "linclust" is faster
    test_fraction: float = 0.2
    max_residues: int = 1022  # each protein's first residues are embedded
    toks_per_batch: int = 16384
    seed: int = 0


# A 2-core CPU embeds a few thousand proteins per model in minutes: the full run takes the first
# 4,000 (the FASTA is a random draw of Swiss-Prot, so they are a random sample).
FULL = Settings(n_proteins=4000, n_terms=25, max_residues=512)
QUICK = Settings(
    n_proteins=200,
    n_terms=5,
    identity=0.5,
    cluster_method="linclust",
    max_residues=256,
    toks_per_batch=8192,
)


# ----------------------------------------------------------------------------- data


def data_file(name: str) -> Path:
    for folder in DATA_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name}: not in {' or '.join(map(str, DATA_DIRS))}")


def read_proteins(fasta: Path, labels: Path, n: int | None) -> tuple[list, list, list[set]]:
    """(ids, sequences, GO term sets) of the first ``n`` labelled records of ``fasta``."""
    import pandas as pd

    from proteinperf.data.fasta import read_fasta

    table = pd.read_csv(labels, sep="\t", dtype=str, keep_default_na=False)
    terms = {acc: set(t.split(",")) - {""} for acc, t in zip(table["accession"], table["go_bp"])}
    ids, seqs, labels_ = [], [], []
    for record in read_fasta(fasta, invalid="unk"):
        if record.id in terms and record.sequence:
            ids.append(record.id)
            seqs.append(record.sequence)
            labels_.append(terms[record.id])
            if n is not None and len(ids) >= n:
                break
    return ids, seqs, labels_


def cluster_split(
    ids: list[str], clusters: dict[str, str], test_fraction: float, seed: int
) -> np.ndarray:
    """Bool mask of test proteins: a cluster goes to test when the hash of its
    representative (and ``seed``) falls below ``test_fraction``; members follow it."""

    def unit(rep: str) -> float:
        return zlib.crc32(f"{seed}:{rep}".encode()) / 2**32

    return np.array([unit(clusters.get(i, i)) < test_fraction for i in ids])


def clusters_of(
    ids: list[str], seqs: list[str], identity: float, work_dir: Path, method: str = "cluster"
) -> dict:
    """id -> cluster representative, from MMseqs2 (proteinperf.data.cluster)."""
    from proteinperf.data.cluster import cluster_fasta

    work_dir.mkdir(parents=True, exist_ok=True)
    fasta = work_dir / "probe.fasta"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in zip(ids, seqs)))
    table = cluster_fasta([fasta], identity, work_dir / "mmseqs", method=method)
    columns = table.to_pydict() if hasattr(table, "to_pydict") else table.to_dict("list")
    return dict(zip(columns["id"], columns["cluster"]))


# ----------------------------------------------------------------------------- features


def composition(seqs: list[str]) -> np.ndarray:
    """(N, 420): amino-acid frequencies, then dipeptide frequencies (overlapping pairs)."""
    index = {a: i for i, a in enumerate(AMINO_ACIDS)}
    out = np.zeros((len(seqs), 20 + 400))
    for row, seq in enumerate(seqs):
        codes = np.array([index.get(a, -1) for a in seq])
        single = codes[codes >= 0]
        out[row, :20] = np.bincount(single, minlength=20) / max(len(single), 1)
        pair_ok = (codes[:-1] >= 0) & (codes[1:] >= 0)
        pairs = codes[:-1][pair_ok] * 20 + codes[1:][pair_ok]
        out[row, 20:] = np.bincount(pairs, minlength=400) / max(len(pairs), 1)
    return out


def mean_embeddings(model, seqs: list[str], max_residues: int, toks_per_batch: int) -> np.ndarray:
    """(N, d): mean over residues of the last layer (proteinperf.inference.embed)."""
    import torch

    from proteinperf.inference.common import length_sorted_batches
    from proteinperf.inference.embed import embed_sequences

    cut = [s[:max_residues] for s in seqs]
    out = np.zeros((len(seqs), model.config.d_model), dtype=np.float32)
    last = model.config.n_layers
    with torch.inference_mode():
        for batch in length_sorted_batches([len(s) for s in cut], toks_per_batch):
            results = embed_sequences(model, [cut[i] for i in batch], [last], ("mean",))
            for i, result in zip(batch, results):
                out[i] = result["mean_representations"][last].numpy()
    return out


def checkpoint_label(path: Path) -> str:
    """<run>/best.ckpt for a training run's checkpoint, else the file name."""
    path = Path(path)
    return (
        f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name
    )


def find_checkpoints() -> list[Path]:
    """$PROTEINPERF_PROBE_CHECKPOINT (several joined by os.pathsep), else the newest run's."""
    explicit = os.environ.get(CHECKPOINT_ENV)
    if explicit:
        paths = [Path(p) for p in explicit.split(os.pathsep) if p]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{CHECKPOINT_ENV}: no such file {', '.join(missing)}")
        return paths
    runs = sorted(glob.glob(RUNS_GLOB), key=os.path.getmtime)
    return [Path(runs[-1])] if runs else []


# ----------------------------------------------------------------------------- probe, metrics


def label_matrix(labels: list[set], train: np.ndarray, n_terms: int) -> tuple[np.ndarray, list]:
    """(N, T) 0/1 for the ``n_terms`` terms most frequent in train (ties by term id)."""
    counts: dict[str, int] = {}
    for terms, is_train in zip(labels, train):
        if is_train:
            for t in terms:
                counts[t] = counts.get(t, 0) + 1
    chosen = sorted(counts, key=lambda t: (-counts[t], t))[:n_terms]
    y = np.array([[t in terms for t in chosen] for terms in labels], dtype=np.int8)
    return y, chosen


def fit_predict(x_train, y_train, x_test, seed: int = 0) -> np.ndarray:
    """(N_test, T) probabilities from one-vs-rest logistic regressions on scaled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros((len(x_test), y_train.shape[1]))
    for t in range(y_train.shape[1]):
        if y_train[:, t].min() == y_train[:, t].max():  # one class in train: its frequency
            scores[:, t] = y_train[0, t]
            continue
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
        )
        model.fit(x_train, y_train[:, t])
        scores[:, t] = model.predict_proba(x_test)[:, 1]
    return scores


def macro_auc(y: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """Mean ROC-AUC over the terms with both classes in test, and how many those are."""
    from sklearn.metrics import roc_auc_score

    aucs = [
        roc_auc_score(y[:, t], scores[:, t])
        for t in range(y.shape[1])
        if 0 < y[:, t].sum() < len(y)
    ]
    return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)


def fmax(y: np.ndarray, scores: np.ndarray, thresholds=THRESHOLDS) -> float:
    """CAFA protein-centric Fmax over proteins with at least one of the terms: at threshold τ,
    precision is averaged over proteins with a prediction >= τ, recall over all of them."""
    keep = y.sum(1) > 0
    y, scores = y[keep].astype(bool), scores[keep]
    best = 0.0
    for tau in thresholds:
        predicted = scores >= tau
        n_pred = predicted.sum(1)
        covered = n_pred > 0
        if not covered.any():
            continue
        hits = (predicted & y).sum(1)
        precision = (hits[covered] / n_pred[covered]).mean()
        recall = (hits / y.sum(1)).mean()
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return float(best)


def evaluate(name: str, x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int) -> dict:
    start = time.process_time()
    scores = fit_predict(x[~test], y[~test], x[test], seed)
    auc, n_auc = macro_auc(y[test], scores)
    return {
        "features": name,
        "dim": int(x.shape[1]),
        "macro_auc": auc,
        "terms_scored": n_auc,
        "fmax": fmax(y[test], scores),
        "fit_cpu_s": time.process_time() - start,
    }


# ----------------------------------------------------------------------------- benchmark


def probe(settings: Settings, work_dir: Path, checkpoints: list[Path]) -> dict:
    from proteinperf.analysis.attention_maps import untrained_control
    from proteinperf.checkpoint import load_model, read_checkpoint

    ids, seqs, labels = read_proteins(data_file(FASTA), data_file(LABELS), settings.n_proteins)
    clusters = clusters_of(ids, seqs, settings.identity, work_dir, settings.cluster_method)
    test = cluster_split(ids, clusters, settings.test_fraction, settings.seed)
    y, terms = label_matrix(labels, ~test, settings.n_terms)
    rows, timings = [], {}
    naive = np.tile(y[~test].mean(0), (int(test.sum()), 1))
    rows.append(
        {
            "features": "naive (train term frequency)",
            "dim": 0,
            "macro_auc": 0.5,
            "terms_scored": macro_auc(y[test], naive)[1],
            "fmax": fmax(y[test], naive),
        }
    )
    rows.append(evaluate("composition (AA + dipeptide)", composition(seqs), y, test, settings.seed))
    models, controls = [], {}
    for checkpoint in checkpoints:
        model, _ = load_model(checkpoint)
        config = model.config
        step = read_checkpoint(checkpoint).get("global_step")  # Lightning checkpoints
        info = {"checkpoint": str(checkpoint), "step": step, **dataclasses.asdict(config)}
        models.append((checkpoint_label(checkpoint), model, info))
        kind = "causal" if config.causal else "bidirectional"
        name = f"untrained ({config.attention}, d={config.d_model} x {config.n_layers}, {kind})"
        if name not in controls:  # one control per distinct shape
            controls[name] = (
                name,
                untrained_control(config, seed=1),
                {"control_of": str(checkpoint)},
            )
    for label, model, _ in [*models, *controls.values()]:
        start = time.process_time()
        x = mean_embeddings(model, seqs, settings.max_residues, settings.toks_per_batch)
        timings[label] = time.process_time() - start
        rows.append(evaluate(label, x, y, test, settings.seed))
    return {
        "rows": rows,
        "terms": terms,
        "n_proteins": len(ids),
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
        "n_clusters": len(set(clusters.values())),
        "test_positives_per_term": y[test].sum(0).tolist(),
        "embed_cpu_s": timings,
        "models": [info for _, _, info in models],
    }


def _describe(m: dict) -> str:
    kind = "causal" if m["causal"] else "masked"
    steps = "" if m["step"] is None else f", {m['step']} steps"
    return (
        f"`{checkpoint_label(m['checkpoint'])}` = `{m['checkpoint']}` ({m['attention']}, "
        f"d={m['d_model']} x {m['n_layers']} layers, {kind} LM{steps})"
    )


def _markdown(result: dict, settings: Settings) -> str:
    rows = [
        [
            r["features"],
            r["dim"],
            f"{r['macro_auc']:.3f}",
            f"{r['fmax']:.3f}",
        ]
        for r in result["rows"]
    ]
    table = markdown_table(["features", "dim", "macro ROC-AUC", "Fmax"], rows)
    what = "; ".join(_describe(m) for m in result["models"]) or (
        "no checkpoint found: set PROTEINPERF_PROBE_CHECKPOINT (model rows missing)"
    )
    return (
        f"{table}\n\n{result['n_proteins']} proteins, {result['n_clusters']} MMseqs2 clusters "
        f"(`{settings.cluster_method}`) at {settings.identity:.0%} identity, 80% coverage; "
        f"{result['n_train']} train / {result['n_test']} test "
        f"(whole clusters); the {len(result['terms'])} most frequent GO BP terms in train; "
        f"mean of the last layer over the first {settings.max_residues} residues; models: {what}."
    )


def run(quick: bool = False, out_dir: Path = Path("benchmarks/results")) -> dict:
    import tempfile

    settings = QUICK if quick else FULL
    checkpoints = find_checkpoints()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="probe-") as work:
        result = probe(settings, Path(work), checkpoints)
    result["settings"] = dataclasses.asdict(settings)
    result["wall_s"] = time.monotonic() - start
    result["machine"] = machine_info()
    result["load_average_end"] = os.getloadavg()
    result["markdown"] = _markdown(result, settings)
    return result
