"""Many ProteinGym substitution assays in one run: per-assay scored CSVs and a summary.

The reference file (ProteinGym's ``DMS_substitutions.csv``) lists one assay per row with at
least ``DMS_id``, ``DMS_filename`` (inside ``dms_dir``) and ``target_seq`` (the wild type).
Each assay's output is written atomically to ``out_dir/<DMS_id>.csv``, so an interrupted run
resumes where it stopped: finished assays are read back, not scored again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from proteinperf.errors import InputError

from .common import atomic_output, progress
from .mutations import dms_metrics, read_text_csv, score_mutations_csv

REFERENCE_COLUMNS = ("DMS_id", "DMS_filename", "target_seq")
SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"


def read_reference(path) -> list[dict]:
    path = Path(path)
    table = read_text_csv(path)
    missing = [c for c in REFERENCE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: not a ProteinGym reference file (no {', '.join(missing)})")
    ids = table["DMS_id"].tolist()
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate is not None:
        raise InputError(f"{path}: DMS_id {duplicate!r} is listed twice")
    for row, dms_id in enumerate(ids):
        if not dms_id or "/" in dms_id or dms_id.startswith("."):
            raise InputError(f"{path}:{row + 2}: DMS_id {dms_id!r} cannot name a file")
    return table[list(REFERENCE_COLUMNS)].to_dict("records")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def score_reference(
    model,
    reference_csv,
    dms_dir,
    out_dir,
    *,
    score_col: str,
    strategy: str | None = None,
    quiet: bool = False,
    **options,
) -> dict:
    """Score every assay of ``reference_csv``; returns {"assays": [...], "mean_spearman", ...}.

    ``options`` go to ``score_mutations_csv`` (toks_per_batch, precision, window).
    """
    import pandas as pd

    assays = read_reference(reference_csv)
    dms_dir, out_dir = Path(dms_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {out_dir} exists and is a file; give a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], 0
    with progress(quiet, "assays", unit="assay", total=len(assays)) as bar:
        for assay in assays:
            target = out_dir / f"{assay['DMS_id']}.csv"
            if target.exists():
                table = pd.read_csv(target, dtype=str, keep_default_na=False)
                if score_col not in table.columns:
                    raise InputError(
                        f"{target}: an earlier output without column {score_col!r}; "
                        "use another output directory or --score-col"
                    )
                metrics = dms_metrics(table, score_col) or {}
                skipped += 1
            else:
                summary = score_mutations_csv(
                    model,
                    assay["target_seq"],
                    dms_dir / assay["DMS_filename"],
                    target,
                    score_col=score_col,
                    strategy=strategy,
                    quiet=True,
                    **options,
                )
                metrics = summary["metrics"] or {}
            rows.append({"DMS_id": assay["DMS_id"], **metrics})
            bar.update(1)
    result = {
        "assays": rows,
        "n_assays": len(rows),
        "resumed": skipped,
        "mean_spearman": _mean(r.get("spearman") for r in rows),
        "mean_auc": _mean(r.get("auc") for r in rows),
        "score_col": score_col,
    }
    write_summary(out_dir, result)
    return result


def write_summary(out_dir: Path, result: dict) -> None:
    """summary.csv (one row per assay, then a "mean" row) and summary.json, atomically."""
    import pandas as pd

    table = pd.DataFrame(result["assays"], columns=["DMS_id", "n", "spearman", "auc"])
    mean = {"DMS_id": "mean", "spearman": result["mean_spearman"], "auc": result["mean_auc"]}
    table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
    table["n"] = table["n"].astype("Int64")  # counts, blank in the mean row (not 40.0000)
    with atomic_output(out_dir / SUMMARY_CSV) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_output(out_dir / SUMMARY_JSON) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")


__all__ = ["read_reference", "score_reference", "write_summary"]
