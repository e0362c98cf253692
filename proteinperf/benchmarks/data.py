"""Data benchmark: `proteinperf prepare` end to end vs Biopython + NumPy, on a UniRef50-style FASTA.

Generates a ~1 GB FASTA (quick: ~50 MB) with realistic headers and 60-column lines in a
temporary directory, runs `python -m proteinperf.cli prepare` as a subprocess (peak RSS of it
and its workers), then the single-process baseline, and checks both token streams are equal.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# Approximate UniProtKB amino-acid background frequencies.
_AA = b"ACDEFGHIKLMNPQRSTVWY"
_FREQ = np.array(
    [
        8.25,
        1.38,
        5.46,
        6.72,
        3.86,
        7.07,
        2.27,
        5.91,
        5.80,
        9.65,
        2.41,
        4.06,
        4.74,
        3.93,
        5.53,
        6.64,
        5.35,
        6.86,
        1.10,
        2.92,
    ]
)
_WORDS = (
    "Peptidyl-prolyl cis-trans isomerase",
    "Uncharacterized protein",
    "ABC transporter",
    "DNA-directed RNA polymerase subunit beta",
    "Histidine kinase",
    "50S ribosomal protein L2",
    "Putative membrane protein",
    "Glycosyltransferase family 2",
)
_TAXA = (
    ("Triplophysa tibetana", 1572043, "9TELE"),
    ("Escherichia coli", 562, "ECOLX"),
    ("Homo sapiens", 9606, "HUMAN"),
    ("Bacillus subtilis", 1423, "BACSU"),
)


def generate_fasta(path: Path, target_bytes: int, seed: int = 0, width: int = 60) -> int:
    """Write a UniRef50-style FASTA of about target_bytes; returns the number of records."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(_AA, np.uint8)
    p = _FREQ / _FREQ.sum()
    written, records = 0, 0
    with open(path, "wb") as f:
        while written < target_bytes:
            lengths = np.clip(rng.lognormal(5.4, 0.65, 20_000), 30, 5000).astype(np.int64)
            residues = alphabet[rng.choice(20, size=int(lengths.sum()), p=p)]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            # a newline after every `width` residues of a record and at each record's end
            breaks = np.concatenate(
                [
                    np.arange(s + width, s + n, width)
                    for s, n in zip(starts.tolist(), lengths.tolist())
                ]
                + [starts[1:]]
            )
            body = np.insert(residues, np.sort(breaks), 10).tobytes() + b"\n"
            nl_before = np.concatenate([[0], np.cumsum((lengths - 1) // width + 1)])
            edges = np.concatenate([starts, [lengths.sum()]]) + nl_before
            parts = []
            for i in range(lengths.size):
                acc = f"A0A{records + i:07X}"
                tax, taxid, code = _TAXA[(records + i) % len(_TAXA)]
                words = _WORDS[(records + i) % len(_WORDS)]
                parts.append(
                    f">UniRef50_{acc} {words} n={1 + i % 7} Tax={tax} TaxID={taxid} "
                    f"RepID={acc}_{code}\n".encode()
                )
                parts.append(body[edges[i] : edges[i + 1]])
            chunk = b"".join(parts)
            f.write(chunk)
            written += len(chunk)
            records += lengths.size
    return records


def baseline(path: Path) -> tuple[np.ndarray, int]:
    """Biopython SimpleFastaParser + NumPy lookup-table encode, one process: all tokens."""
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    from proteinperf.data.alphabet import get_alphabet

    lut = get_alphabet().lut
    chunks, records = [], 0
    with open(path) as f:
        for _, seq in SimpleFastaParser(f):
            chunks.append(lut[np.frombuffer(seq.encode(), np.uint8)])
            records += 1
    return np.concatenate(chunks), records


def _peak_rss(proc: subprocess.Popen) -> int:
    """Poll the summed RSS of a process and its children until it exits."""
    import psutil

    peak = 0
    p = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [p, *p.children(recursive=True)]
            peak = max(peak, sum(q.memory_info().rss for q in procs if q.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    return peak


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(quick: bool = False, out_dir: Path | None = None, workers: int | None = None) -> dict:
    size = 50_000_000 if quick else 1_000_000_000
    with tempfile.TemporaryDirectory(prefix="proteinperf-bench-data-") as tmp:
        fasta = Path(tmp) / "uniref50_like.fasta"
        records = generate_fasta(fasta, size)
        nbytes = fasta.stat().st_size
        out = Path(tmp) / "corpus"
        cmd = [
            sys.executable,
            "-m",
            "proteinperf.cli",
            "prepare",
            str(fasta),
            "--out",
            str(out),
            "--quiet",
            "--valid-fraction",
            "0",
            "--test-fraction",
            "0",
        ]
        if workers:
            cmd += ["--workers", str(workers)]
        subprocess.run(["cat", str(fasta)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        load = os.getloadavg()[0]
        cpu0 = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        peak = [0]
        watcher = threading.Thread(target=lambda: peak.__setitem__(0, _peak_rss(proc)))
        watcher.start()
        proc.wait()
        watcher.join()
        ours_s = time.perf_counter() - start
        ours_cpu = _children_cpu() - cpu0
        if proc.returncode != 0:
            raise RuntimeError(f"prepare failed with exit code {proc.returncode}")
        start, cpu0 = time.perf_counter(), time.process_time()
        ref_tokens, ref_records = baseline(fasta)
        base_s = time.perf_counter() - start
        base_cpu = time.process_time() - cpu0
        ours_tokens = np.fromfile(out / "train.tokens.bin", np.uint8)
        equal = bool(np.array_equal(ours_tokens, ref_tokens)) and ref_records == records
    ours_mbs, base_mbs = nbytes / ours_s / 1e6, nbytes / base_s / 1e6
    result = {
        "input_bytes": nbytes,
        "records": records,
        "cpu_count": os.cpu_count(),
        "prepare_s": round(ours_s, 3),
        "prepare_MBps": round(ours_mbs, 1),
        "baseline_s": round(base_s, 3),
        "baseline_MBps": round(base_mbs, 1),
        "speedup": round(ours_mbs / base_mbs, 2),
        # CPU seconds (all threads) and the load average before the run: wall times on a
        # shared machine move with other people's work, CPU time much less
        "prepare_cpu_s": round(ours_cpu, 2),
        "baseline_cpu_s": round(base_cpu, 2),
        "load_before": round(load, 1),
        "peak_rss_MB": round(peak[0] / 1e6, 1),
        "tokens_equal": equal,
        "targets": {"MBps": 250, "speedup": 3.5, "peak_rss_MB": 1000},
    }
    result["markdown"] = "\n".join(
        [
            f"FASTA -> corpus, {nbytes / 1e6:,.0f} MB, {records:,} records, {os.cpu_count()} cores",
            "",
            "| pipeline | seconds | MB/s | peak RSS |",
            "|---|---:|---:|---:|",
            f"| `proteinperf prepare` | {ours_s:.1f} | {ours_mbs:.0f} | {peak[0] / 1e6:,.0f} MB |",
            f"| Biopython + NumPy LUT (1 process) | {base_s:.1f} | {base_mbs:.0f} | |",
            "",
            f"speedup {ours_mbs / base_mbs:.2f}x (target 3.5x), token streams equal: {equal}; "
            f"CPU s: prepare {ours_cpu:.1f}, baseline {base_cpu:.1f}; load before {load:.1f}",
        ]
    )
    if not equal:
        raise AssertionError("prepare and the Biopython baseline disagree on the tokens")
    return result


if __name__ == "__main__":
    import json

    r = run(quick="--quick" in sys.argv)
    print(r.pop("markdown"))
    print(json.dumps(r, indent=1))
