"""Benchmarks behind ``make bench``: ``python -m proteinperf.benchmarks [--only ...] [--quick]``.

Each benchmark is a submodule ``proteinperf.benchmarks.<name>`` exposing
``run(quick: bool, out_dir: Path) -> dict``; the returned dict is written to
``<out_dir>/<name>.json`` and its ``"markdown"`` entry (if any) is printed and written to
``<out_dir>/<name>.md``. Shared measuring helpers live in ``proteinperf.benchmarks._measure``.
"""

BENCHMARKS = (
    "attention",
    "causal",
    "data",
    "training",
    "embedding",
    "bulk",
    "esm",
    "generation",
    "probe",
    "heldout",
    "precision",
    "mixed_training",
)
