"""`make gpu-check`: the dry run end to end, its JSON schema, the time boxes, the checks failing
on broken attention, and the settings against the paper's model config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import CONF, ROOT
from hydra import compose, initialize_config_dir

from proteinperf.benchmarks.gpu_check import SECTIONS, correctness, runner, throughput
from proteinperf.benchmarks.gpu_check.env import peak_bf16_tflops
from proteinperf.benchmarks.gpu_check.settings import DRY_RUN, TrainShapes, settings_for
from proteinperf.model import ModelConfig, PerformerLM
from proteinperf.train import register_resolvers

MODULE = "proteinperf.benchmarks.gpu_check"


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", MODULE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "results"
    proc = _run("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())  # strict JSON: no NaN
    assert report["schema"] == runner.SCHEMA and report["dry_run"] and report["ok"]
    assert report["problems"] == []
    assert list(report["sections"]) == list(SECTIONS)
    for entry in report["sections"].values():
        assert entry["status"] == "ok" and entry["wall_s"] <= entry["box_s"]
    assert report["wall_s"] <= report["budget_s"]
    sections = {name: entry["result"] for name, entry in report["sections"].items()}

    assert sections["env"]["torch"] == torch.__version__ and sections["env"]["device"] == "cpu"

    tests = sections["tests"]
    assert tests["failed"] == 0 and tests["passed"] == len(tests["cases"]) + len(tests["decoding"])
    kinds = {(c["kernel"], c["causal"], c["padded"], c["dtype"]) for c in tests["cases"]}
    for kernel in ("relu", "softmax", "exact"):
        for causal in (False, True):
            for dtype in ("float32", "bfloat16"):
                assert (kernel, causal, True, dtype) in kinds
    assert all(set(c["errors"]) == {"out", "dq", "dk", "dv"} for c in tests["cases"])
    assert {d["level"] for d in tests["decoding"]} == {"attention", "model"}

    bench = sections["bench"]
    assert {c["impl"] for c in bench["cases"]} == {"favor_relu", "favor_softmax", "sdpa"}
    assert len(bench["cases"]) == 2 * 2 * 3 * len(DRY_RUN.bench.lengths)  # modes, dirs, impls
    assert all(c["status"] == "ok" and c["median_ms"] > 0 for c in bench["cases"])

    train = sections["train"]
    assert "6*(sum of Linear weights" in train["flop_formula"]
    assert [r["model"] for r in train["runs"]] == ["bidirectional", "causal"]
    for r in train["runs"]:
        assert r["status"] == "ok" and r["tokens_per_s"] > 0 and r["flops_per_token"] > 0
        assert r["loss_end"] < r["loss_start"] and r["loss_decreased"]
        assert r["mfu"] is None  # no GPU peak on a CPU
    markdown = (out / "gpu_check.md").read_text()
    for heading in ("Attention on the device", "FAVOR+ against SDPA", "training throughput"):
        assert heading in markdown
    assert "Problems: none" in markdown


def test_bad_arguments_write_nothing(tmp_path):
    out = tmp_path / "results"
    proc = _run("--dry-run", "--out", str(out), "--corpus", str(tmp_path / "missing.fa"))
    assert proc.returncode == 2 and "missing.fa" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
    proc = _run("--dry-run", "--out", str(out), "--sections", "env,typo")
    assert proc.returncode == 2 and "typo" in proc.stderr
    if not torch.cuda.is_available():
        proc = _run("--out", str(out))
        assert proc.returncode == 2 and "sees no CUDA device" in proc.stderr
    assert not out.exists()


def test_a_failing_section_is_recorded_and_the_rest_runs(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a FASTA file\n")
    out = tmp_path / "results"
    proc = _run("--dry-run", "--out", str(out), "--sections", "train,env", "--corpus", str(bad))
    assert proc.returncode == 1
    report = json.loads((out / "gpu_check.json").read_text())
    train, env = report["sections"]["train"], report["sections"]["env"]
    assert train["status"] == "error" and "notes.txt" in train["error"]
    assert train["result"]["corpus"] == str(bad)  # what it recorded before failing is kept
    assert env["status"] == "ok" and not report["ok"]
    assert any(p.startswith("section train: error") for p in report["problems"])


def test_a_section_past_its_box_is_killed_and_keeps_its_partial_record(tmp_path):
    # A worker that believes it has a minute (negative grace) in a box of a few seconds.
    settings = settings_for(True, train_s=60.0)
    entry = runner.run_section("train", settings, box_s=8.0, tmp=tmp_path, grace_s=-60.0)
    assert entry["status"] == "timeout" and entry["wall_s"] < 15
    assert entry["result"]["corpus"].endswith("swissprot_20k.fasta.gz")


def test_a_spent_budget_skips_sections_but_writes_the_report(tmp_path):
    settings = settings_for(True, budget_s=4.0)
    report = runner.run_check(settings, ["env", "tests"], tmp_path, ["--budget-s", "4"])
    assert [e["status"] for e in report["sections"].values()] == ["skipped", "skipped"]
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not written["ok"] and len(written["problems"]) == 2


def test_the_checks_fail_on_broken_causal_attention(monkeypatch):
    real = correctness.favor_attention

    def leaks_the_future(q, k, v, features, causal=False, **kwargs):
        return real(q, k, v, features, causal=False, **kwargs)

    monkeypatch.setattr(correctness, "favor_attention", leaks_the_future)
    result = correctness.run(DRY_RUN, float("inf"), lambda partial: None)
    failed = {(c["kernel"], c["causal"]) for c in result["cases"] if not c["passed"]}
    passed = {(c["kernel"], c["causal"]) for c in result["cases"] if c["passed"]}
    assert ("relu", True) in failed and ("softmax", True) in failed
    assert ("relu", False) in passed and ("exact", True) in passed
    assert not failed & passed
    assert not any(d["passed"] for d in result["decoding"] if d["level"] == "attention")


def test_train_settings_are_the_papers_model():
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        model = compose("train", overrides=["model=paper_trembl"]).model
    for key, value in TrainShapes().model.items():
        assert model[key] == value, key
    assert TrainShapes().length == model.max_len == 1024


def test_flops_per_token_of_the_paper_model():
    model = PerformerLM(ModelConfig(**TrainShapes().model))
    d, m, h, layers, ff, vocab = 512, 256, 8, 36, 1024, 33
    weights = layers * (4 * d * d + 2 * d * ff) + vocab * d  # q, k, v, out, fc1, fc2; LM head
    favor = 4 * m * d + 4 * m * (d + h)
    assert throughput.flops_per_token(model, 1024) == 6 * weights + 3 * layers * favor


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("Quadro RTX 6000", None),
    ],
)
def test_peak_lookup(name, peak):
    assert peak_bf16_tflops(name) == peak


def test_make_target_picks_the_python_and_installs_only_given_wheels(tmp_path):
    def dry(*args):
        out = subprocess.run(
            ["make", "-n", "--no-print-directory", "gpu-check", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [" ".join(line.split()) for line in out.splitlines() if line.strip()]

    venv = tmp_path / "venv"
    lines = dry(f"VENV={venv}", "ARGS=--dry-run --out x")
    assert lines == [f"python3 -m {MODULE} --dry-run --out x"]
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    lines = dry(f"VENV={venv}", f"WHEELS={tmp_path}", f"CORPUS={tmp_path}/c.fa")
    assert lines[0].startswith(
        f"{venv}/bin/python -m pip install --no-index --find-links {tmp_path}"
    )
    assert lines[1] == f"{venv}/bin/python -m {MODULE} --corpus {tmp_path}/c.fa"
