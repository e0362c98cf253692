"""Embedding benchmark (issue 5): residues/s and peak memory of ours against fair-esm's ESM2.

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

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from proteinperf.benchmarks._measure import machine_info, markdown_table, run_case

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


FULL = Settings()
QUICK = Settings(
    speed_lengths=(256, 1024),
    memory_lengths=(4096,),
    repeats=2,
    case_budget_s=10.0,
    timeout_s=300.0,
    quiet_wait_s=2.0,
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


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> dict:
    s = settings or (QUICK if quick else FULL)
    started = time.monotonic()
    speed = [
        _case(impl, length, s, s.repeats, _batch(length, s))
        for length in s.speed_lengths
        for impl in IMPLS
    ]
    memory = [_case(impl, length, s, 1, 1) for length in s.memory_lengths for impl in IMPLS]
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
        "### Targets (issue 5)",
        markdown_table(["check", "value", "target", "met"],
                       [[c["name"], "–" if c["value"] is None else f"{c['value']:.2f}",
                         c["target"], "yes" if c["met"] else "NO"] for c in checks]),
    ])  # fmt: skip
    return {
        "name": "embedding",
        "quick": quick,
        "settings": asdict(s),
        "machine": machine,
        "elapsed_s": time.monotonic() - started,
        "speed": speed,
        "memory": memory,
        "targets": checks,
        "markdown": markdown,
    }
