"""The parent of the GPU check: time boxes, one worker process per section, the result files.

Each section gets the share ``SECTION_WEIGHTS`` of the budget still left (what an earlier
section leaves unused goes to the later ones). A worker is told its deadline a little before
the box ends, so that it can stop between cases and return what it has; at the end of its box
it is killed and its last partial record is kept, marked "timeout". After every section the
JSON and markdown are rewritten, so they exist whatever happens later.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import proteinperf

from .report import markdown
from .settings import SECTION_WEIGHTS, Settings
from .worker import write_atomic

SCHEMA = "proteinperf.gpu_check/1"
FINISH_RESERVE_S = 5.0  # kept back for writing the results
MIN_BOX_S = 3.0  # a section that would get less is skipped


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_section(
    name: str, settings: Settings, box_s: float, tmp: Path, grace_s: float | None = None
) -> dict:
    """Run one section in a worker process within ``box_s`` seconds; its entry of the JSON.

    The worker is asked to stop ``grace_s`` (default: 15% of the box, at most 15 s) before
    the box ends, and is killed when it does not."""
    settings_path, out_path, log_path = (
        tmp / "settings.json",
        tmp / f"{name}.json",
        tmp / f"{name}.log",
    )
    settings_path.write_text(json.dumps(settings.to_dict()))
    grace = min(15.0, 0.15 * box_s) if grace_s is None else grace_s
    deadline = time.time() + box_s - grace
    env = dict(os.environ)
    package_root = str(Path(proteinperf.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [
        sys.executable,
        "-m",
        f"{__package__}.worker",
        name,
        str(settings_path),
        repr(deadline),
        str(out_path),
    ]
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            returncode = proc.wait(timeout=box_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode, timed_out = proc.wait(), True
    entry = {"box_s": round(box_s, 1), "wall_s": round(time.monotonic() - start, 1)}
    try:
        written = json.loads(out_path.read_text())
    except (OSError, json.JSONDecodeError):
        written = {"status": "running", "result": None}
    entry["result"] = written.get("result")
    if timed_out:
        entry["status"], entry["error"] = "timeout", f"killed at the end of its {box_s:.0f} s box"
    elif written["status"] == "ok" and returncode == 0:
        entry["status"] = "ok"
    else:
        entry["status"] = "error"
        entry["error"] = written.get("error") or f"worker exited with {returncode}"
    if entry["status"] != "ok":
        entry["log_tail"] = _tail(log_path)
    return entry


def problems(report: dict) -> list[str]:
    """What went wrong, one line each; an empty list is a clean run."""
    found = []
    for name, entry in report["sections"].items():
        if entry["status"] != "ok":
            found.append(
                f"section {name}: {entry['status']}: {entry.get('error', '')}".rstrip(": ")
            )
    tests = (report["sections"].get("tests") or {}).get("result") or {}
    if tests.get("failed"):
        found.append(f"{tests['failed']} attention check(s) failed")
    bench = (report["sections"].get("bench") or {}).get("result") or {}
    errors = [c for c in bench.get("cases", []) if c.get("status") == "error"]
    if errors:
        found.append(f"{len(errors)} benchmark case(s) failed")
    train = (report["sections"].get("train") or {}).get("result") or {}
    for run in train.get("runs", []):
        if run.get("status") == "ok" and not run.get("loss_decreased"):
            found.append(f"train {run['model']}: the loss did not go down")
    return found


def write_results(report: dict, out_dir: Path) -> None:
    report["problems"] = problems(report)
    report["ok"] = not report["problems"] and len(report["sections"]) == len(report["requested"])
    write_atomic(out_dir / "gpu_check.json", report)
    md_path = out_dir / "gpu_check.md"
    tmp = md_path.with_name(md_path.name + ".tmp")
    tmp.write_text(markdown(report) + "\n")
    os.replace(tmp, md_path)


def run_check(
    settings: Settings,
    sections: list[str],
    out_dir: Path,
    argv: list[str],
    started: float | None = None,
) -> dict:
    """Run ``sections`` in order within ``settings.budget_s`` counted from ``started``
    (a time.monotonic(); default now); the report, also written to out_dir."""
    start = time.monotonic() if started is None else started
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "schema": SCHEMA,
        "dry_run": settings.dry_run,
        "command": ["python", "-m", __package__, *argv],
        "started": _now(),
        "budget_s": settings.budget_s,
        "settings": settings.to_dict(),
        "requested": sections,
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for i, name in enumerate(sections):
            left = settings.budget_s - (time.monotonic() - start) - FINISH_RESERVE_S
            share = SECTION_WEIGHTS[name] / sum(SECTION_WEIGHTS[n] for n in sections[i:])
            box = left * share
            print(f"== {name}: time box {max(box, 0):.0f} s", flush=True)
            if box < MIN_BOX_S:
                entry = {"status": "skipped", "error": "budget spent", "box_s": round(box, 1)}
            else:
                entry = run_section(name, settings, box, Path(tmp))
            report["sections"][name] = entry
            report["wall_s"] = round(time.monotonic() - start, 1)
            report["finished"] = _now()
            write_results(report, out_dir)
            line = f"== {name}: {entry['status']}"
            if "wall_s" in entry:
                line += f" in {entry['wall_s']:.0f} s"
            print(line + (f" ({entry['error']})" if entry.get("error") else ""), flush=True)
    return report
