"""Homology-aware splits: planted relatives must share a split; the hash split cannot promise it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from proteinperf.data.cluster import (
    MMseqsError,
    cluster_fasta,
    find_mmseqs,
    read_cluster_tsv,
    search_hits,
)
from proteinperf.data.fasta import DataError
from proteinperf.data.prepare import prepare

AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
N_FAMILIES = 30


def _families(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Unrelated random proteins, each with two point mutants (~95% identity) and a fragment."""
    rng = np.random.default_rng(seed)
    families = {}
    for f in range(N_FAMILIES):
        base = AMINO[rng.integers(20, size=int(rng.integers(150, 260)))]
        members = [(f"FAM{f}_WT", "".join(base))]
        for m in range(2):
            mutant = base.copy()
            sites = rng.choice(base.size, size=base.size // 20, replace=False)
            mutant[sites] = AMINO[rng.integers(20, size=sites.size)]
            members.append((f"FAM{f}_MUT{m}", "".join(mutant)))
        start = int(rng.integers(0, base.size // 4))
        members.append((f"FAM{f}_FRAG", "".join(base[start : start + base.size // 2])))
        families[f"FAM{f}"] = members
    return families


def _write(path, families) -> str:
    records = [r for members in families.values() for r in members]
    order = np.random.default_rng(1).permutation(len(records))  # relatives not adjacent
    with open(path, "w") as f:
        for i in order:
            rid, seq = records[i]
            f.write(f">{rid} planted\n{seq}\n")
    return str(path)


def _splits_of(corpus) -> dict[str, str]:
    out = {}
    for split in ("train", "valid", "test"):
        meta = pd.read_parquet(corpus / f"{split}.meta.parquet")
        out.update({rid: split for rid in meta["id"]})
    return out


def _families_split(splits: dict[str, str]) -> int:
    """How many families have members in more than one split."""
    by_family: dict[str, set] = {}
    for rid, split in splits.items():
        by_family.setdefault(rid.split("_")[0], set()).add(split)
    return sum(len(s) > 1 for s in by_family.values())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    return _write(folder / "planted.fasta", _families())


SPLIT = dict(valid_fraction=0.3, test_fraction=0.3, progress=False)


@pytest.fixture(scope="module")
def clustered(planted, tmp_path_factory):
    """The planted proteins prepared with MMseqs2 clustering at 50% (the one mmseqs run here)."""
    corpus = tmp_path_factory.mktemp("clustered") / "corpus"
    manifest = prepare([planted], corpus, cluster_identity=0.5, **SPLIT)
    return corpus, manifest


def _meta(corpus) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(corpus / f"{s}.meta.parquet") for s in ("train", "valid", "test")]
    )


@pytest.mark.slow
def test_clusters_group_mutants_and_fragments(clustered):
    corpus, manifest = clustered
    meta = _meta(corpus)
    assert len(meta) == 4 * N_FAMILIES
    family = meta["id"].str.split("_").str[0]
    assert (meta["cluster_id"].str.split("_").str[0] == family).all()  # nothing unrelated joins
    assert meta["cluster_id"].nunique() == N_FAMILIES  # and each family is one cluster
    assert manifest["clustering"] == {
        "identity": 0.5,
        "coverage": 0.8,
        "method": "cluster",
        "clusters": N_FAMILIES,
        "seconds": manifest["clustering"]["seconds"],
    }


def test_cluster_split_keeps_relatives_together(clustered, planted, tmp_path):
    corpus, manifest = clustered
    splits = _splits_of(corpus)
    assert len(splits) == 4 * N_FAMILIES
    assert _families_split(splits) == 0
    assert set(splits.values()) == {"train", "valid", "test"}
    assert manifest["options"]["seed"] == 0
    assert not list(corpus.parent.glob(".*tmp*")) and not (corpus / ".mmseqs").exists()

    # The plain hash split scatters the same families (this is what the clustering fixes).
    plain = tmp_path / "plain"
    prepare([planted], plain, **SPLIT)
    assert _families_split(_splits_of(plain)) > N_FAMILIES // 3


@pytest.mark.slow
def test_clusters_file_gives_the_same_split(clustered, planted, tmp_path):
    corpus, _ = clustered
    meta = _meta(corpus)
    tsv = tmp_path / "clusters.tsv"
    meta[["cluster_id", "id"]].to_csv(tsv, sep="\t", header=False, index=False)
    again = tmp_path / "again"
    manifest = prepare([planted], again, clusters_file=tsv, **SPLIT)
    assert manifest["clustering"]["method"] == "file"
    for split in ("train", "valid", "test"):
        a, b = corpus / f"{split}.tokens.bin", again / f"{split}.tokens.bin"
        assert a.read_bytes() == b.read_bytes()
    assert _splits_of(again) == _splits_of(corpus)


def _family_tsv(path, families, leave_out=()) -> str:
    """The planted families as a representative<TAB>member TSV, some members left out."""
    rows = [
        f"{members[0][0]}\t{rid}\n"
        for members in families.values()
        for rid, _ in members
        if rid not in leave_out
    ]
    path.write_text("".join(rows))
    return str(path)


def test_clusters_file_must_list_every_record(planted, tmp_path):
    families = _families()
    full = _family_tsv(tmp_path / "full.tsv", families)
    manifest = prepare([planted], tmp_path / "ok", clusters_file=full, **SPLIT)
    assert manifest["clustering"]["clusters"] == N_FAMILIES
    assert _families_split(_splits_of(tmp_path / "ok")) == 0

    partial = _family_tsv(tmp_path / "partial.tsv", families, {"FAM3_FRAG", "FAM7_MUT1"})
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        prepare([planted], out, clusters_file=partial, **SPLIT)
    message = str(err.value)
    assert message.startswith(f"{partial}: 2 of the {4 * N_FAMILIES} FASTA records are in no")
    assert "(e.g. 'FAM3_FRAG')" in message or "(e.g. 'FAM7_MUT1')" in message
    assert not out.exists() and not list(tmp_path.glob(".out*"))

    foreign = tmp_path / "foreign.tsv"
    foreign.write_text("X1\tX1\nX1\tX2\n")
    with pytest.raises(DataError, match=rf"none of the {4 * N_FAMILIES} FASTA records is in it"):
        prepare([planted], out, clusters_file=foreign, **SPLIT)
    assert not out.exists()


@pytest.mark.slow
def test_search_finds_relatives_and_not_strangers(planted, tmp_path):
    """How the far-from-training set is chosen: a query with no hit has no detectable relative."""
    families = _families()
    targets = _write(tmp_path / "targets.fasta", {f: families[f] for f in list(families)[:10]})
    queries = tmp_path / "queries.fasta"
    stranger = "".join(AMINO[np.random.default_rng(7).integers(20, size=200)])
    wt = families["FAM3"][0][1]
    queries.write_text(f">FAM3_MUTX\n{wt[:60]}W{wt[61:]}\n>STRANGER\n{stranger}\n")
    hits = search_hits(queries, targets, tmp_path / "work").to_pandas()
    assert set(hits["query"]) == {"FAM3_MUTX"}
    assert set(hits["target"]).issubset({m for m, _ in families["FAM3"]})
    assert hits["identity"].max() > 0.95


def test_uniref_input_uses_its_own_clusters(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTEINPERF_MMSEQS", str(tmp_path / "no-such-mmseqs"))
    fasta = tmp_path / "uniref.fasta"
    fasta.write_text(">UniRef50_P1 a n=2 Tax=x TaxID=1 RepID=P1\nMKV\n>UniRef50_P2 b\nMKL\n")
    manifest = prepare([fasta], tmp_path / "out", progress=False, cluster_identity=0.5)
    assert manifest["clustering"]["method"] == "uniref"


def test_missing_mmseqs_is_one_line_with_install_hint(tmp_path, monkeypatch, planted):
    monkeypatch.setenv("PROTEINPERF_MMSEQS", str(tmp_path / "no-such-mmseqs"))
    with pytest.raises(MMseqsError, match="not an executable"):
        find_mmseqs()
    out = tmp_path / "out"
    cli = [
        sys.executable,
        "-m",
        "proteinperf.cli",
        "prepare",
        planted,
        "--out",
        str(out),
        "--cluster-identity",
        "0.5",
        "--quiet",
    ]
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "PROTEINPERF_MMSEQS" in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_failing_mmseqs_leaves_nothing_behind(tmp_path, monkeypatch, planted):
    fake = tmp_path / "mmseqs"
    fake.write_text("#!/bin/sh\necho 'Error: out of disk space' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PROTEINPERF_MMSEQS", str(fake))
    out = tmp_path / "out"
    with pytest.raises(MMseqsError, match=r"exit 3\): Error: out of disk space") as err:
        prepare([planted], out, progress=False, cluster_identity=0.5)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    log = tmp_path / "out.mmseqs.log"  # the log the message names is still there to read
    assert str(err.value).endswith(f"(log: {log})")
    assert log.read_text() == "Error: out of disk space\n"


@pytest.mark.parametrize("coverage", [-0.1, 1.5, float("nan")])
def test_cluster_coverage_is_range_checked_before_anything_runs(
    tmp_path, monkeypatch, planted, coverage
):
    fake = tmp_path / "mmseqs"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PROTEINPERF_MMSEQS", str(fake))
    with pytest.raises(DataError, match=r"cluster coverage must be in \[0, 1\]"):
        prepare([planted], tmp_path / "o", progress=False, cluster_identity=0.5,
                cluster_coverage=coverage)  # fmt: skip
    assert not (tmp_path / "ran").exists() and sorted(tmp_path.iterdir()) == [fake]


def test_bad_cluster_arguments(tmp_path, planted):
    with pytest.raises(DataError, match="identity must be in"):
        cluster_fasta([planted], 1.5, tmp_path / "w")
    with pytest.raises(DataError, match="either a cluster identity or a clusters file"):
        prepare(
            [planted], tmp_path / "o", progress=False, cluster_identity=0.5, clusters_file=planted
        )
    bad = tmp_path / "bad.tsv"
    bad.write_text("only-one-column\n")
    with pytest.raises(DataError, match="bad.tsv: not a two-column cluster TSV"):
        read_cluster_tsv(bad)


def test_shipped_default_clustering_covers_the_default_corpus():
    from pathlib import Path

    from proteinperf.data.fasta import read_fasta

    data = Path(__file__).resolve().parents[2] / "data"
    table = read_cluster_tsv(data / "swissprot_20k.clusters50.tsv.gz").to_pandas()
    ids = {r.id for r in read_fasta(data / "swissprot_20k.fasta.gz")}
    assert set(table["id"]) == ids and len(table) == len(ids) == 20_000
    assert set(table["cluster"]) <= ids
