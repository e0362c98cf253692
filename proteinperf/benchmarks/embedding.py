"""Embedding benchmark: residues/s and peak memory of ours against fair-esm's ESM2.

Both models have the esm2_t6_8M shape (6 layers, d=320, 20 heads, d_ff=1280, rotary, random
weights, no download); ours runs FAVOR+ with m=256 features (favor_relu, favor_softmax), the
baseline fair-esm's exact attention. A step embeds a token-budget batch (about 4096 tokens:
16 x 256, 4 x 1024, 1 x 4096, as `proteinperf embed` batches them) through
``embed_sequences`` (mean of the last layer) or the equivalent fair-esm call, under
``torch.inference_mode`` in float32 on 2 threads. Each case runs in a fresh worker process
(``_measure.run_case``); memory is the worker's total peak RSS (baseline with the model
loaded + the rise while embedding). ESM2 keeps the (heads, L, L) attention of a layer, so
long sequences are run under an address-space cap and reported as out of memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from proteinperf.benchmarks._measure import OtherLoad, machine_info, markdown_table, run_case

IMPLS = ("esm2", "favor_relu", "favor_softmax")
LABELS = {
    "esm2": "fair-esm ESM2",
    "favor_relu": "ours favor_relu",
    "favor_softmax": "ours favor_softmax",
}
GIB = 2**30
SHAPE = {"layers": 6, "dim": 320, "heads": 20, "features": 256}
TARGET_SPEEDUP = {256: 1.0, 1024: 1.5, 4096: 4.0}
TARGET_TITIN_GIB = 6.0
TITIN = 34350


@dataclass(frozen=True)
class Settings:
    speed_lengths: tuple[int, ...] = (256, 1024, 4096)
    memory_lengths: tuple[int, ...] = (16384, TITIN)
    toks_per_batch: int = 4096
    repeats: int = 2
    case_budget_s: float = 20.0
    timeout_s: float = 900.0
    mem_limit_gib: float = 14.0  # a worker's address-space cap (ESM2 at 16k needs ~25 GiB)
    quiet_wait_s: float = 10.0
    corpus_records: int | None = None  # bulk rows: the whole 20,000-protein corpus
    corpus_processes: tuple[int, ...] = (1, 2)
    corpus_toks_per_batch: int = 16384


FULL = Settings()
QUICK = Settings(
    speed_lengths=(256, 1024),
    memory_lengths=(4096,),
    repeats=2,
    case_budget_s=10.0,
    timeout_s=300.0,
    quiet_wait_s=2.0,
    corpus_records=500,
)


# ----------------------------------------------------------------------------- worker side


def _random_sequences(length: int, batch: int, seed: int = 0) -> list[str]:
    from proteinperf.data.alphabet import STANDARD_AMINO_ACIDS

    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(STANDARD_AMINO_ACIDS), (batch, length), generator=g)
    return ["".join(STANDARD_AMINO_ACIDS[i] for i in row) for row in picks.tolist()]


def _ours(attention: str):
    from proteinperf.inference.embed import embed_sequences
    from proteinperf.model import ModelConfig, PerformerLM

    torch.manual_seed(0)
    config = ModelConfig(
        d_model=SHAPE["dim"],
        n_layers=SHAPE["layers"],
        n_heads=SHAPE["heads"],
        d_ff=4 * SHAPE["dim"],
        nb_features=SHAPE["features"],
        attention=attention,
        positional="rotary",
        dropout=0.0,
    )
    model = PerformerLM(config).eval()
    layer = config.n_layers
    return lambda seqs: embed_sequences(model, seqs, [layer], ["mean"])


def _esm2():
    import esm
    from esm.model.esm2 import ESM2

    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = ESM2(
        num_layers=SHAPE["layers"],
        embed_dim=SHAPE["dim"],
        attention_heads=SHAPE["heads"],
        alphabet=alphabet,
    ).eval()
    converter = alphabet.get_batch_converter()
    layer = SHAPE["layers"]

    @torch.inference_mode()
    def embed(seqs):  # what esm-extract does for --include mean
        _, _, tokens = converter([(str(i), s) for i, s in enumerate(seqs)])
        reps = model(tokens, repr_layers=[layer])["representations"][layer]
        return [reps[i, 1 : len(s) + 1].mean(0) for i, s in enumerate(seqs)]

    return embed


def build_case(impl: str, length: int, batch: int):
    """(prepare, step) for ``_measure``: embed ``batch`` random sequences of ``length``."""
    embed = _esm2() if impl == "esm2" else _ours(impl)
    embed(_random_sequences(16, 2, seed=1))  # warm-up: lazy initialisation is not measured
    return (lambda: _random_sequences(length, batch)), embed


# ----------------------------------------------------------------------------- parent side


def _batch(length: int, s: Settings) -> int:
    return max(1, s.toks_per_batch // length)


def _case(impl: str, length: int, s: Settings, repeats: int, batch: int) -> dict:
    result = run_case(
        "proteinperf.benchmarks.embedding:build_case",
        {"impl": impl, "length": length, "batch": batch},
        repeats=repeats,
        budget_s=s.case_budget_s,
        timeout_s=s.timeout_s,
        mem_limit_bytes=int(s.mem_limit_gib * GIB),
        quiet_wait_s=s.quiet_wait_s,
    )
    result.update(impl=impl, length=length, batch=batch)
    if result["status"] == "ok":
        result["residues_per_s"] = batch * length / result["min_s"]
        result["total_peak_gib"] = (result["peak_mib"] + result["baseline_mib"]) / 1024
    print(f"  {impl:14s} L={length:6d} x{batch:<3d} {_short(result)}", flush=True)
    return result


def _short(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r['reason']}"
    load = r.get("other_cpus")
    return (
        f"{r['residues_per_s']:9.0f} res/s  min {r['min_s']:.3f} s  peak "
        f"{r['total_peak_gib']:.2f} GiB  other load {load if load is None else round(load, 2)}"
    )


def _cell(r: dict, key: str, fmt: str) -> str:
    if r["status"] != "ok":
        return "OOM" if r["status"] in ("oom", "crashed") else r["status"]
    return format(r[key], fmt)


def _speed_rows(speed: list[dict], s: Settings) -> tuple[list, list]:
    by = {(r["impl"], r["length"]): r for r in speed}
    rows, checks = [], []
    for length in s.speed_lengths:
        base = by[("esm2", length)]
        row = [length, _batch(length, s), _cell(base, "residues_per_s", ",.0f")]
        for impl in IMPLS[1:]:
            r = by[(impl, length)]
            ratio = None
            if r["status"] == "ok" and base["status"] == "ok":
                ratio = r["residues_per_s"] / base["residues_per_s"]
            row += [_cell(r, "residues_per_s", ",.0f"), "–" if ratio is None else f"{ratio:.2f}x"]
            target = TARGET_SPEEDUP.get(length)
            if target is not None:
                checks.append(
                    {
                        "name": f"{impl} speedup at L={length}",
                        "value": ratio,
                        "target": f">= {target}x",
                        "met": ratio is not None and ratio >= target,
                    }
                )
        row.append(f">= {TARGET_SPEEDUP[length]}x" if length in TARGET_SPEEDUP else "")
        rows.append(row)
    return rows, checks


def _memory_rows(memory: list[dict], s: Settings) -> tuple[list, list]:
    by = {(r["impl"], r["length"]): r for r in memory}
    rows, checks = [], []
    for length in s.memory_lengths:
        row = [length]
        for impl in IMPLS:
            r = by[(impl, length)]
            row.append(_cell(r, "total_peak_gib", ".2f"))
            row.append(_cell(r, "first_s", ".1f"))
            if impl != "esm2" and length == TITIN:
                value = r.get("total_peak_gib")
                checks.append(
                    {
                        "name": f"{impl} titin peak RSS (GiB)",
                        "value": value,
                        "target": f"< {TARGET_TITIN_GIB}",
                        "met": value is not None and value < TARGET_TITIN_GIB,
                    }
                )
        rows.append(row)
    return rows, checks


# ----------------------------------------------------------------------------- bulk corpus

ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIRS = (ROOT / "data", ROOT.parent / "shared" / "data")
CORPUS = "swissprot_20k.fasta.gz"
# The shape of `make train`'s default model (conf/model/performer_bid.yaml), random weights.
CORPUS_MODEL = dict(
    d_model=128, n_layers=3, n_heads=4, d_ff=512, nb_features=64, attention="favor_relu",
    positional="rotary", dropout=0.0,
)  # fmt: skip


def corpus_path() -> Path:
    for folder in CORPUS_DIRS:
        if (folder / CORPUS).is_file():
            return folder / CORPUS
    raise FileNotFoundError(f"{CORPUS} is in none of {', '.join(map(str, CORPUS_DIRS))}")


def _write_first(source: Path, target: Path, n: int) -> None:
    from proteinperf.data.fasta import read_fasta

    with open(target, "w") as f:
        for i, record in enumerate(read_fasta(source)):
            if i == n:
                break
            f.write(f">{record.id}\n{record.sequence}\n")


def _tree_sample(pid: int, cpu: dict[int, float]) -> tuple[int, int]:
    """(summed RSS of the process tree, largest single RSS) in bytes, now; updates ``cpu``
    (pid -> CPU seconds so far) for every process of the tree."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = []
    for proc in procs:
        try:
            with proc.oneshot():
                rss.append(proc.memory_info().rss)
                times = proc.cpu_times()
            cpu[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return sum(rss), max(rss, default=0)


def corpus_case(fasta: Path, checkpoint: Path, processes: int, s: Settings, work: Path) -> dict:
    """`proteinperf embed` (mean of the last layer, h5) over ``fasta`` on ``processes`` CPU
    processes, as a user runs it; wall time, CPU time and peak RSS of the process tree."""
    out = work / f"corpus-{processes}.h5"
    cmd = [sys.executable, "-m", "proteinperf.cli", "embed", str(checkpoint), str(fasta),
           str(out), "--device", "cpu", "--devices", str(processes), "--quiet",
           "--toks-per-batch", str(s.corpus_toks_per_batch)]  # fmt: skip
    threads = max(1, 2 // processes)  # the machine's 2 cores, split between the processes
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    peak_total = peak_one = 0
    cpu: dict[int, float] = {}
    started = time.monotonic()
    with OtherLoad() as load, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stderr=err, text=True, cwd=work)
        while proc.poll() is None:
            total, one = _tree_sample(proc.pid, cpu)
            peak_total, peak_one = max(peak_total, total), max(peak_one, one)
            time.sleep(0.5)
        err.seek(0)
        stderr = err.read()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return {"status": "error", "processes": processes, "reason": stderr.strip()[-300:]}
    import h5py

    with h5py.File(out) as f:
        records = len(f["_index/ids"])
    out.unlink()
    return {
        "status": "ok",
        "processes": processes,
        "threads": threads,
        "records": records,
        "wall_s": wall,
        "cpu_s": sum(cpu.values()),  # sampled every 0.5 s: a slight undercount
        "peak_total_gib": peak_total / GIB,
        "peak_process_gib": peak_one / GIB,
        "other_cpus": load.cpus,
        "load_average": os.getloadavg(),
    }


def run_corpus(s: Settings) -> list[dict]:
    import torch as _torch

    from proteinperf.checkpoint import save_model
    from proteinperf.model import ModelConfig, PerformerLM

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        work = Path(tmp)
        fasta = corpus_path()
        if s.corpus_records is not None:
            fasta = work / "corpus.fasta"
            _write_first(corpus_path(), fasta, s.corpus_records)
        from proteinperf.data.fasta import read_fasta

        residues = sum(len(r.sequence) for r in read_fasta(fasta))
        _torch.manual_seed(0)
        checkpoint = save_model(work / "model.pt", PerformerLM(ModelConfig(**CORPUS_MODEL)).eval())
        for processes in s.corpus_processes:
            r = corpus_case(fasta, checkpoint, processes, s, work)
            r["residues"] = residues
            if r["status"] == "ok":
                r["residues_per_s"] = residues / r["wall_s"]
            print(f"  corpus x{processes} process(es): {r}", flush=True)
            results.append(r)
    return results


def corpus_markdown(results: list[dict], s: Settings) -> str:
    rows = []
    for r in results:
        if r["status"] != "ok":
            rows.append([r["processes"], "–", "–", "–", "–", "–", "–", "–", r["status"]])
            continue
        rows.append([
            r["processes"], r.get("threads", max(1, 2 // r["processes"])), f"{r['records']:,}",
            f"{r['residues']:,}", f"{r['wall_s']:.0f}",
            f"{r['residues_per_s']:,.0f}", f"{r['cpu_s']:.0f}",
            f"{r['peak_total_gib']:.2f} / {r['peak_process_gib']:.2f}",
            "–" if r["other_cpus"] is None else f"{r['other_cpus']:.2f}",
        ])  # fmt: skip
    shape = CORPUS_MODEL
    return "\n\n".join([
        f"### Bulk: the whole corpus ({CORPUS}) through `proteinperf embed --devices N` "
        f"(CPU processes, gloo; d={shape['d_model']} x {shape['n_layers']} layers, "
        f"m={shape['nb_features']}, mean of the last layer to h5, "
        f"--toks-per-batch {s.corpus_toks_per_batch}; 2 cores shared by all processes)",
        markdown_table(
            ["processes", "threads each", "records", "residues", "wall s", "residues/s", "CPU s",
             "peak RSS GiB (all / largest process)", "CPUs used by other work"],
            rows,
        ),
    ])  # fmt: skip


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> dict:
    s = settings or (QUICK if quick else FULL)
    started = time.monotonic()
    speed = [
        _case(impl, length, s, s.repeats, _batch(length, s))
        for length in s.speed_lengths
        for impl in IMPLS
    ]
    memory = [_case(impl, length, s, 1, 1) for length in s.memory_lengths for impl in IMPLS]
    corpus = run_corpus(s) if s.corpus_processes else []
    speed_rows, speed_checks = _speed_rows(speed, s)
    memory_rows, memory_checks = _memory_rows(memory, s)
    checks = speed_checks + memory_checks
    speed_headers = ["L", "batch", "ESM2 res/s"]
    for impl in IMPLS[1:]:
        speed_headers += [f"{impl} res/s", "speedup"]
    speed_headers.append("target")
    memory_headers = ["L"]
    for impl in IMPLS:
        memory_headers += [f"{LABELS[impl]} peak GiB", "time s"]
    machine = machine_info()
    setup = (
        f"{SHAPE['layers']} layers, d={SHAPE['dim']}, {SHAPE['heads']} heads, "
        f"m={SHAPE['features']}, float32, {machine['threads']} threads, load average "
        f"{machine['load_average'][0]:.1f} at the end"
    )
    markdown = "\n\n".join([
        f"### Embedding throughput ({setup}; ~{s.toks_per_batch} tokens per batch, best of "
        f"{s.repeats})",
        markdown_table(speed_headers, speed_rows),
        f"### Peak RSS embedding one sequence (whole process; cap {s.mem_limit_gib:.0f} GiB "
        "address space, OOM = over it)",
        markdown_table(memory_headers, memory_rows),
        "### Targets",
        markdown_table(["check", "value", "target", "met"],
                       [[c["name"], "–" if c["value"] is None else f"{c['value']:.2f}",
                         c["target"], "yes" if c["met"] else "NO"] for c in checks]),
        corpus_markdown(corpus, s),
    ])  # fmt: skip
    return {
        "name": "embedding",
        "quick": quick,
        "settings": asdict(s),
        "machine": machine,
        "elapsed_s": time.monotonic() - started,
        "speed": speed,
        "memory": memory,
        "corpus": corpus,
        "targets": checks,
        "markdown": markdown,
    }
