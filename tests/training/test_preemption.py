"""Preemption: a signal saves last.ckpt at a step boundary and exits; a requeued SLURM job
resumes in the same folder from its newest checkpoint and ends as the uninterrupted run did."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import ROOT

from proteinperf.preemption import Preempted, Preemption, resume_checkpoint
from proteinperf.train import run_id, train

RUN = [
    "experiment=tiny_cpu",
    "model.dropout=0.1",
    "model.redraw_interval=3",
    "trainer.max_steps=8",
    "trainer.val_check_interval=5",
    "trainer.limit_val_batches=2",
    "test=false",
    "data.max_length=64",
    "optim.warmup_steps=3",
    "optim.total_steps=10",
]
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def slurm_env(monkeypatch, tmp_path: Path, restarts: int = 0) -> Path:
    """A single-task SLURM job (Lightning's SLURMEnvironment) with a fake scontrol that logs
    its arguments to the returned file."""
    for name in ("PROTEINPERF_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key


def test_slurm_run_folder_is_the_job_for_single_and_multi_task(monkeypatch, tmp_path):
    slurm_env(monkeypatch, tmp_path)
    assert run_id(str(tmp_path)) == "slurm-4242"
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert run_id(str(tmp_path)) == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_id(str(tmp_path)) == "slurm-77_3"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # salloc / srun --pty: not a job
    assert run_id(str(tmp_path)) != "slurm-77_3"


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM"])
def test_signal_saves_and_requeued_job_resumes_exactly(make_cfg, tmp_path, monkeypatch, signame):
    straight = train(make_cfg(*RUN, tmp=tmp_path / "a"))
    calls = slurm_env(monkeypatch, tmp_path)
    probe = [
        "+callbacks.signal._target_=preemption_probe.SignalAt",
        "+callbacks.signal.step=2",
        f"+callbacks.signal.signal={signame}",
    ]
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    with pytest.raises(Preempted) as stopped:
        train(make_cfg(*RUN, *probe, tmp=tmp_path / "b"))
    signum = getattr(signal, signame)
    assert stopped.value.code == 128 + signum and stopped.value.step == 3
    folder = tmp_path / "b" / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no final.ckpt
    assert load(folder / "last.ckpt")["global_step"] == 3
    requeued = calls.read_text().split() if calls.exists() else []
    assert requeued == (["requeue", "4242"] if signame == "SIGUSR1" else [])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the same command, requeued
    resumed = train(make_cfg(*RUN, tmp=tmp_path / "b"))
    assert resumed["trainer"].global_step == straight["trainer"].global_step == 8
    assert_same_weights(straight["module"].model.state_dict(), resumed["module"].model.state_dict())

    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # requeued again after training ended
    again = train(make_cfg(*RUN, tmp=tmp_path / "b"))
    assert again["trainer"].global_step == 8
    assert_same_weights(resumed["module"].model.state_dict(), again["module"].model.state_dict())


def test_last_checkpoint_on_a_wall_clock_interval(make_cfg, tmp_path):
    """Validating every 5 of 7 steps, last.ckpt would hold step 5; saved every ~0 minutes,
    it holds step 7."""
    cfg = make_cfg(*RUN, "trainer.max_steps=7", "callbacks.preemption.interval_minutes=1e-6")
    folder = Path(train(cfg)["output_dir"]) / "checkpoints"
    assert load(folder / "last.ckpt")["global_step"] == 7
    assert not list(folder.glob(".*tmp*"))


class _Strategy:
    """What Preemption uses of a DDP strategy; counts the all-reduces."""

    root_device = torch.device("cpu")

    def __init__(self):
        self.reduced = []

    def reduce(self, value, reduce_op):
        self.reduced.append(int(value))
        return value

    def barrier(self, name=None):
        pass


def _ddp_trainer(folder: Path) -> SimpleNamespace:
    """Rank 0 of 2, as far as Preemption looks (save_checkpoint writes the step)."""
    trainer = SimpleNamespace(world_size=2, global_step=0, is_global_zero=True, loggers=[])
    trainer.strategy = _Strategy()
    trainer.checkpoint_callback = SimpleNamespace(dirpath=str(folder))
    trainer.save_checkpoint = lambda path: Path(path).write_text(str(trainer.global_step))
    return trainer


def test_ranks_agree_every_n_steps_and_at_the_end_of_training(tmp_path, monkeypatch):
    """Under DDP one all-reduce (a host sync) every check_every_n_steps optimizer steps, not
    every step; a signal the end of training overtakes still saves and stops there."""
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    trainer = _ddp_trainer(tmp_path)
    callback = Preemption(interval_minutes=None, check_every_n_steps=4)
    for step in range(1, 14):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step - 1)
    assert len(trainer.strategy.reduced) == 3  # after steps 4, 8 and 12
    callback.received = signal.SIGTERM  # during step 13, after the last agreement
    with pytest.raises(Preempted) as stopped:
        callback.on_train_end(trainer, None)
    assert stopped.value.step == 13 and (tmp_path / "last.ckpt").read_text() == "13"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left


def test_resume_checkpoint_is_the_newest(tmp_path):
    assert resume_checkpoint(tmp_path) is None
    for i, name in enumerate(["final.ckpt", "best.ckpt", "last.ckpt"]):
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    assert resume_checkpoint(tmp_path) == str(tmp_path / "last.ckpt")
    os.utime(tmp_path / "final.ckpt", (2000, 2000))  # training had ended
    assert resume_checkpoint(tmp_path) == str(tmp_path / "final.ckpt")


def _command(tmp_path: Path, corpus_cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proteinperf.train",
        *RUN,
        "trainer.enable_progress_bar=false",
        "callbacks.preemption.interval_minutes=null",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.cache_dir={corpus_cache}",
        *extra,
    ]


def _env(tmp_path: Path, **slurm: str) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)]),
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        **SLURM,
        **slurm,
    }
    for name in ("PROTEINPERF_DDP_CHILD_ARGV", "PROTEINPERF_RUN_ID", "SLURM_ARRAY_JOB_ID"):
        env.pop(name, None)
    return env


def _fake_scontrol(tmp_path: Path) -> Path:
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return calls


@pytest.mark.slow
def test_single_task_job_signalled_from_outside_resumes_in_its_folder(tmp_path, corpus_cache):
    """sbatch --signal=USR1 while a single-task job trains: it saves, requeues itself and
    exits within seconds; the same command, requeued, continues in slurm-<job> to the end."""
    calls = _fake_scontrol(tmp_path)
    steps = tmp_path / "step"
    cmd = _command(
        tmp_path,
        corpus_cache,
        "trainer.max_steps=40",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=1",
        "+callbacks.pace._target_=preemption_probe.Pace",
        f"+callbacks.pace.step_file={steps}",
    )
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _step(steps) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGUSR1)
    reached = _step(steps)  # at least the step before the one the signal found under way
    out, _ = proc.communicate(timeout=120)  # a few seconds; the timeout only guards a hang
    assert proc.returncode == 128 + signal.SIGUSR1, out[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    run = tmp_path / "logs" / "tiny_cpu" / "runs" / "slurm-4242"
    saved = load(run / "checkpoints" / "last.ckpt")["global_step"]
    # Promptly: after the step under way when the signal came, not at a later validation or
    # the end (steps, not seconds: a busy machine may take any time to get there).
    assert 3 <= saved <= reached + 2, (saved, reached)
    assert not (run / "checkpoints" / "final.ckpt").exists()

    again = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=_env(tmp_path, SLURM_RESTART_COUNT="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in again.stdout
    assert [p.name for p in (tmp_path / "logs" / "tiny_cpu" / "runs").iterdir()] == [run.name]
    assert load(run / "checkpoints" / "final.ckpt")["global_step"] == 40
    assert (run / "csv" / "metrics.before-restart-1.csv").is_file()  # the first part's log


def _step(step_file: Path) -> int:
    """The last step preemption_probe.Pace wrote (0 before the first)."""
    for _ in range(100):
        text = step_file.read_text().strip() if step_file.exists() else "0"
        if text:
            return int(text)
        time.sleep(0.01)  # between Pace's truncate and write
    return 0


def _two_tasks(tmp_path, corpus_cache, job: str, *extra: str, restarts: str = "0") -> list:
    """Two SLURM tasks of one job (as srun starts them): gloo ranks 0 and 1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in (0, 1):
        env = _env(
            tmp_path,
            SLURM_JOB_ID=job,
            SLURM_NTASKS="2",
            SLURM_NTASKS_PER_NODE="2",
            SLURM_NNODES="1",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_RESTART_COUNT=restarts,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        cmd = _command(tmp_path, corpus_cache, "trainer=ddp_cpu", *extra)
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outs)]


@pytest.mark.slow
def test_two_task_gloo_job_preempted_and_requeued_ends_as_uninterrupted(tmp_path, corpus_cache):
    """SIGTERM reaches only rank 1 during step 3; the ranks agree every 2 steps: both save at
    step 4 and exit; requeued, both resume in slurm-<job> and end with the uninterrupted run's
    weights."""
    _fake_scontrol(tmp_path)
    straight = _two_tasks(tmp_path, corpus_cache, "100")
    assert [code for code, _ in straight] == [0, 0], straight[0][1][-3000:]

    probe = [
        "+callbacks.signal._target_=preemption_probe.SignalAt",
        "+callbacks.signal.step=2",
        "+callbacks.signal.signal=SIGTERM",
        "+callbacks.signal.ranks=[1]",
        "callbacks.preemption.check_every_n_steps=2",
    ]
    stopped = _two_tasks(tmp_path, corpus_cache, "200", *probe)
    assert [code for code, _ in stopped] == [128 + signal.SIGTERM] * 2, stopped[1][1][-3000:]
    runs = tmp_path / "logs" / "tiny_cpu" / "runs"
    assert load(runs / "slurm-200" / "checkpoints" / "last.ckpt")["global_step"] == 4

    resumed = _two_tasks(tmp_path, corpus_cache, "200", restarts="1")
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:]
    assert sorted(p.name for p in runs.iterdir()) == ["slurm-100", "slurm-200"]
    a = load(runs / "slurm-100" / "checkpoints" / "final.ckpt")
    b = load(runs / "slurm-200" / "checkpoints" / "final.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    assert_same_weights(a["state_dict"], b["state_dict"])
