"""Bulk inference benchmark: how busy `proteinperf embed` keeps the model, process start included.

Two measurements with the shipped bidirectional model on the CPU (``embedding.bulk_case``):
the share of an `embed` run's wall time spent in the model's forward pass (5,000 real records
of 40-160 residues from the corpus), and the time from the process start to the first forward
for a synthetic million-record FASTA made of the same records (the run is stopped there).
Both run the real CLI in a fresh process; the machine's load average is reported with them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from proteinperf.benchmarks._measure import machine_info
from proteinperf.benchmarks.embedding import FULL, QUICK, bulk_markdown, run_bulk_busy


def run(quick: bool, out_dir: Path) -> dict:
    s = QUICK if quick else FULL
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        bulk = run_bulk_busy(s, Path(tmp))
    markdown, checks = bulk_markdown(bulk)
    return {
        "name": "bulk",
        "quick": quick,
        "machine": machine_info(),
        "elapsed_s": time.monotonic() - started,
        **bulk,
        "targets": checks,
        "markdown": markdown + "\n\n" + _targets(checks),
    }


def _targets(checks: list[dict]) -> str:
    from proteinperf.benchmarks._measure import markdown_table

    rows = [
        [c["name"], "–" if c["value"] is None else f"{c['value']:.2f}", c["target"],
         "yes" if c["met"] else "NO"]
        for c in checks
    ]  # fmt: skip
    return markdown_table(["check", "value", "target", "met"], rows)
