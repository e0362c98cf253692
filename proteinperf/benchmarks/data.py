"""Data benchmark: `proteinperf prepare` end to end (process start included) on the 866-protein
sample and on UniRef50-style FASTA files of 300 MB and 1 GB (quick: 30 and 100 MB), beside
Biopython + a NumPy lookup table on the 300 MB file.

The large files are generated with realistic headers and 60-column lines into a temporary
directory, deleted afterwards. Each prepare run is the `proteinperf` command in a subprocess;
its CPU time comes from wait4() (all its threads), its peak RSS from /proc (VmHWM).
The machine is shared: CPU seconds move much less with other people's work than wall seconds,
so both are reported, with the load average before each size.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from proteinperf import resources

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


SAMPLE = resources.data_dir() / "sample_proteins.fasta"
REPEATS = 3  # runs per input; the median is reported
TARGETS = {"small_cpu_s": 1.0, "small_peak_rss_MB": 200, "MBps": 250}


def prepare_run(fasta: Path, out: Path, *fractions: str) -> dict:
    """`proteinperf prepare FASTA --out OUT` in a fresh process: wall s, CPU s, peak RSS."""
    cmd = [sys.executable, "-m", "proteinperf.cli", "prepare", str(fasta), "--out", str(out)]
    start = time.perf_counter()
    pid = os.posix_spawn(sys.executable, [*cmd, "--quiet", *fractions], os.environ)
    peak = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        peak = max(peak, _high_water_rss(pid))
        time.sleep(0.005)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"prepare failed with exit code {code}: {' '.join(cmd)}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_MiB": peak / 2**20}


def _high_water_rss(pid: int) -> int:
    """Peak RSS (bytes) of the running process's own memory: VmHWM, polled. Not wait4's
    ru_maxrss, which also counts this (large) process's pages that the child shared before its
    exec. VmHWM only grows, so polling misses only a peak in the last few ms of a run."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(fasta: Path, out: Path, *fractions: str) -> dict:
    """Median wall and CPU seconds and the largest peak RSS of REPEATS runs (page cache warm)."""
    subprocess.run(["cat", str(fasta)], stdout=subprocess.DEVNULL, check=True)
    load = os.getloadavg()[0]
    runs = [prepare_run(fasta, out, *fractions) for _ in range(REPEATS)]
    nbytes = fasta.stat().st_size
    wall = statistics.median(r["wall_s"] for r in runs)
    cpu = statistics.median(r["cpu_s"] for r in runs)
    return {
        "input_bytes": nbytes,
        "wall_s": round(wall, 3),
        "wall_s_runs": [round(r["wall_s"], 3) for r in runs],
        "cpu_s": round(cpu, 3),
        "cpu_s_runs": [round(r["cpu_s"], 3) for r in runs],
        "MBps": round(nbytes / wall / 1e6, 1),
        "MB_per_cpu_s": round(nbytes / cpu / 1e6, 1),
        "peak_rss_MiB": round(max(r["peak_rss_MiB"] for r in runs), 1),
        "peak_rss_MiB_runs": [round(r["peak_rss_MiB"], 1) for r in runs],
        "load_before": round(load, 2),
    }


def run(quick: bool = False, out_dir: Path | None = None) -> dict:
    sizes = (
        {"300 MB": 30_000_000, "1 GB": 100_000_000}
        if quick
        else {
            "300 MB": 300_000_000,
            "1 GB": 1_000_000_000,
        }
    )
    no_split = ("--valid-fraction", "0", "--test-fraction", "0")
    result = {"cpu_count": os.cpu_count(), "repeats": REPEATS, "targets": TARGETS, "inputs": {}}
    with tempfile.TemporaryDirectory(prefix="proteinperf-bench-data-") as tmp:
        tmp = Path(tmp)
        result["inputs"]["sample"] = measure(SAMPLE, tmp / "sample")
        result["inputs"]["sample"]["records"] = 866
        for label, size in sizes.items():
            fasta = tmp / "uniref50_like.fasta"
            records = generate_fasta(fasta, size)
            entry = measure(fasta, tmp / "corpus", *no_split)
            tokens = np.fromfile(tmp / "corpus" / "train.tokens.bin", np.uint8)
            entry["records"] = records
            if label == "300 MB":  # the baseline once: it costs ~25 CPU-s per GB
                start, cpu0 = time.perf_counter(), time.process_time()
                ref_tokens, ref_records = baseline(fasta)
                entry["baseline_s"] = round(time.perf_counter() - start, 3)
                entry["baseline_cpu_s"] = round(time.process_time() - cpu0, 3)
                entry["baseline_MBps"] = round(entry["input_bytes"] / entry["baseline_s"] / 1e6, 1)
                entry["tokens_equal"] = bool(np.array_equal(tokens, ref_tokens))
                entry["tokens_equal"] &= ref_records == records
                if not entry["tokens_equal"]:
                    raise AssertionError("prepare and the Biopython baseline disagree on tokens")
                del ref_tokens
            manifest = (tmp / "corpus" / "manifest.json").read_text()
            if f'"records_read": {records},' not in manifest:
                raise AssertionError(f"{label}: prepare did not read all {records} records")
            del tokens
            fasta.unlink()
            result["inputs"][label] = entry
    result["markdown"] = markdown(result)
    return result


def markdown(result: dict) -> str:
    rows = [
        f"`proteinperf prepare` end to end (process start included), {result['cpu_count']} cores, "
        f"median of {result['repeats']} runs",
        "",
        "| input | records | wall s | MB/s | CPU s | MB per CPU-s | peak RSS | load before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in result["inputs"].items():
        size = f"{r['input_bytes'] / 1e6:,.0f} MB" if label != "sample" else "0.17 MB"
        name = f"sample, {size}" if label == "sample" else f"UniRef50-style, {size}"
        rows.append(
            f"| {name} | {r['records']:,} | {r['wall_s']:.2f} | {r['MBps']:.1f} | "
            f"{r['cpu_s']:.2f} | {r['MB_per_cpu_s']:.1f} | {r['peak_rss_MiB']:.0f} MiB | "
            f"{r['load_before']:.1f} |"
        )
    base = next((r for r in result["inputs"].values() if "baseline_s" in r), None)
    if base:
        rows += [
            "",
            f"Biopython + NumPy LUT (1 process) on the {base['input_bytes'] / 1e6:,.0f} MB file: "
            f"{base['baseline_s']:.1f} s, {base['baseline_MBps']:.0f} MB/s, "
            f"{base['baseline_cpu_s']:.1f} CPU-s; token streams equal: {base['tokens_equal']}",
        ]
    return "\n".join(rows)


if __name__ == "__main__":
    import json

    r = run(quick="--quick" in sys.argv)
    print(r.pop("markdown"))
    print(json.dumps(r, indent=1))
