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
import shutil
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
BULK_FIRST_RECORDS = 1_000_000


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
    bulk_first_records: int = BULK_FIRST_RECORDS


FULL = Settings()
QUICK = Settings(
    speed_lengths=(256, 1024),
    memory_lengths=(4096,),
    repeats=2,
    case_budget_s=10.0,
    timeout_s=300.0,
    quiet_wait_s=2.0,
    corpus_records=500,
    bulk_first_records=100_000,
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


# ----------------------------------------------------------------------------- bulk busy

BULK_MODEL = "swissprot-performer-bid"
BULK_LENGTHS = (40, 160)
BULK_RECORDS = 5000
TARGET_FORWARD_SHARE = 0.75
TARGET_FIRST_BATCH_S = 5.0
TARGET_SMALL_S = 3.0  # a 4-record embed, process start included
SMALL_RECORDS = 4
TIMES_ENV = "PROTEINPERF_BENCH_FORWARD_TIMES"
STOP_ENV = "PROTEINPERF_BENCH_STOP_AFTER_FIRST"


def short_records(n: int) -> list[tuple[str, str]]:
    """``n`` real (id, sequence) pairs of 40-160 residues from the corpus: every protein of
    that length first (4,041), then prefixes of the next longer proteins, cut to the lengths
    of the short ones in turn (the corpus has too few whole proteins that short)."""
    from proteinperf.data.fasta import read_fasta

    low, high = BULK_LENGTHS
    short, longer = [], []
    for record in read_fasta(corpus_path()):
        if low <= len(record.sequence) <= high:
            short.append((record.id, record.sequence))
        elif len(record.sequence) > high:
            longer.append((record.id, record.sequence))
    picked = short[:n]
    for k, (record_id, seq) in enumerate(longer[: n - len(picked)]):
        picked.append((f"{record_id}_prefix", seq[: len(short[k % len(short)][1])]))
    return picked


def write_records(path: Path, records: list[tuple[str, str]], copies: int = 1) -> Path:
    """A FASTA (60 residues a line) of ``records``, repeated ``copies`` times (ids suffixed)."""
    with open(path, "w") as f:
        for copy in range(copies):
            suffix = f"_{copy}" if copies > 1 else ""
            for record_id, seq in records:
                lines = "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60))
                f.write(f">{record_id}{suffix}\n{lines}\n")
    return path


def timed_cli(argv: list[str]) -> int:
    """``proteinperf <argv>`` with the model's forward timed: writes {"forward_s", "calls",
    "imported", "first_start", "first_end"} (epoch seconds) as JSON to
    $PROTEINPERF_BENCH_FORWARD_TIMES; with $PROTEINPERF_BENCH_STOP_AFTER_FIRST set, exits
    right after the first forward."""
    import atexit
    import json

    from proteinperf.model import PerformerLM

    times = {"forward_s": 0.0, "forward_cpu_s": 0.0, "calls": 0, "first_start": None,
             "first_end": None}  # fmt: skip
    times["imported"] = time.time()  # torch and the model imported: the CLI starts
    path = os.environ[TIMES_ENV]
    forward = PerformerLM.forward

    def write() -> None:
        Path(path).write_text(json.dumps(times))

    def timed(self, *args, **kwargs):
        started, cpu = time.perf_counter(), time.process_time()
        if times["first_start"] is None:
            times["first_start"] = time.time()
        out = forward(self, *args, **kwargs)
        times["forward_s"] += time.perf_counter() - started
        times["forward_cpu_s"] += time.process_time() - cpu  # all of its threads
        times["calls"] += 1
        if times["first_end"] is None:
            times["first_end"] = time.time()
            if os.environ.get(STOP_ENV):
                write()
                os._exit(0)
        return out

    PerformerLM.forward = timed
    atexit.register(write)
    from proteinperf.cli import main

    return main(argv)


def bulk_case(fasta: Path, out: Path, stop_after_first: bool = False, threads: int = 2) -> dict:
    """`proteinperf embed` of ``fasta`` with the shipped bidirectional model on the CPU, timed
    from before the process starts: wall, forward seconds, time to the first forward."""
    times = out.with_suffix(".times.json")
    code = "import sys; from proteinperf.benchmarks.embedding import timed_cli; "
    code += "sys.exit(timed_cli(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "embed", BULK_MODEL, str(fasta), str(out), "--device",
           "cpu", "--quiet"]  # fmt: skip
    env = {**os.environ, TIMES_ENV: str(times), "OMP_NUM_THREADS": str(threads)}
    if stop_after_first:
        env[STOP_ENV] = "1"
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with OtherLoad() as load:
        started = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
        wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command and the processes it waited for (its DataLoader worker)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # stopped after the first batch: the shards and lock of that "interrupted" run go
    shutil.rmtree(out.parent / f".{out.name}.shards", ignore_errors=True)
    (out.parent / f".{out.name}.lock").unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    result = {"wall_s": wall, "cpu_s": cpu, "other_cpus": load.cpus,
              "load_average": os.getloadavg()}  # fmt: skip
    if proc.returncode != 0 or not times.exists():
        return {**result, "status": "error", "reason": proc.stderr.strip()[-300:]}
    import json

    t = json.loads(times.read_text())
    times.unlink()
    result.update(status="ok", forward_s=t["forward_s"], forward_calls=t["calls"])
    result["forward_share"] = t["forward_s"] / wall
    result["forward_cpu_s"] = t["forward_cpu_s"]
    result["forward_cpu_share"] = t["forward_cpu_s"] / cpu if cpu > 0 else None
    result["first_batch_s"] = t["first_start"] - started
    result["imports_s"] = t["imported"] - started  # process start and importing torch
    return result


def run_bulk_busy(s: Settings, work: Path, records: int = BULK_RECORDS) -> dict:
    """The forward share of a whole `embed` run of short real records, the time to the first
    batch of a synthetic million-record FASTA made of the same records, and the wall time of
    an `embed` of the first four (a small input: in process)."""
    pairs = short_records(records)
    small = bulk_case(write_records(work / "small.fasta", pairs[:SMALL_RECORDS]), work / "s.h5")
    small.update(records=SMALL_RECORDS, residues=sum(len(q) for _, q in pairs[:SMALL_RECORDS]))
    fasta = write_records(work / "short.fasta", pairs)
    run = bulk_case(fasta, work / "short.h5")
    run.update(records=len(pairs), residues=sum(len(seq) for _, seq in pairs))
    copies = -(-s.bulk_first_records // len(pairs))
    big = write_records(work / "million.fasta", pairs, copies)
    first = bulk_case(big, work / "million.h5", stop_after_first=True)
    first.update(records=copies * len(pairs), fasta_bytes=big.stat().st_size)
    big.unlink()
    print(f"  bulk: {run}\n  first batch: {first}\n  small: {small}", flush=True)
    return {"run": run, "first": first, "small": small}


def bulk_markdown(bulk: dict) -> tuple[str, list[dict]]:
    run, first, small = bulk["run"], bulk["first"], bulk.get("small")
    share = run.get("forward_share")
    first_s = first.get("first_batch_s")
    small_s = small.get("wall_s") if small and small.get("status") == "ok" else None
    checks = [
        {"name": "forward share of an embed run's wall time", "value": share,
         "target": f">= {TARGET_FORWARD_SHARE}",
         "met": share is not None and share >= TARGET_FORWARD_SHARE},
        {"name": f"time to the first batch, {first['records']:,} records (s)", "value": first_s,
         "target": f"< {TARGET_FIRST_BATCH_S}",
         "met": first_s is not None and first_s < TARGET_FIRST_BATCH_S},
        {"name": f"wall time of a {SMALL_RECORDS}-record embed (s)", "value": small_s,
         "target": f"<= {TARGET_SMALL_S}",
         "met": small_s is not None and small_s <= TARGET_SMALL_S},
    ]  # fmt: skip

    def cell(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get("status") == "ok" else r.get("status", "–")

    def cpu_share(r: dict) -> str:
        return "–" if r.get("forward_cpu_share") is None else f"{r['forward_cpu_share']:.0%}"

    def row(name: str, r: dict, forward: bool = True) -> list[str]:
        return [name, f"{r['records']:,}", cell(r, "wall_s", ".1f"), cell(r, "cpu_s", ".1f"),
                cell(r, "forward_s", ".1f") if forward else "–",
                cell(r, "forward_share", ".0%") if forward else "–",
                cpu_share(r) if forward else "–", cell(r, "imports_s", ".1f"),
                cell(r, "first_batch_s", ".1f"), f"{r['load_average'][0]:.1f}"]  # fmt: skip

    rows = [row("embed, short records", run), row("first batch only", first, forward=False)]
    if small:
        rows.append(row("embed, small input (in process)", small))
    low, high = BULK_LENGTHS
    text = "\n\n".join([
        f"### Bulk: how busy `proteinperf embed {BULK_MODEL}` keeps the model (CPU, "
        f"{low}-{high}-residue real records, mean of the last layer to h5; wall time from "
        "before the process starts)",
        markdown_table(["run", "records", "wall s", "CPU s", "forward s", "forward share",
                        "forward share of CPU", "start + import torch s", "first batch s",
                        "load average"], rows),
    ])  # fmt: skip
    return text, checks
