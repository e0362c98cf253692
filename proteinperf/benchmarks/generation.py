"""Generation benchmark: decoding cost per token, state memory, sample statistics.

Decoding: one model shape (6 layers, d=256, 8 heads, d_ff=1024, causal, rotary, random
weights), batch 1, float32, ``torch.inference_mode``, 1 thread (decoding is many tiny ops; on
shared cores extra threads only wait for each other). Times are CPU seconds of this process
(median over steps; wall times are kept in the JSON): on a machine shared with other work,
wall time measures the neighbours. The Performer and the KV cache take turns in blocks of
``BLOCK`` timed steps, each block after one untimed step, so both see the same background load
but neither is timed right after the other has flushed the caches. At each position p:
  * Performer (favor_softmax, m=256) recurrent: the state is built by real chunked prefill
    (``PerformerLM.step``, 1024 positions per chunk) up to p; latency = median of
    one-token steps (``PerformerLM.step``: the model's one forward path, the fused in-place
    one-token attention kernels); memory = bytes of the state tensors.
  * Exact attention with a KV cache: the same model with softmax attention; the cache is filled
    with p random keys/values (a step's time and the cache size do not depend on the values;
    a real O(p²) prefill to 32k would take minutes on 2 cores); memory = bytes of the cache.
  * Recompute: the Performer's full causal forward over p + 1 tokens, as a decoder without a
    state must do for every new token (one run per position).
Sample statistics need a trained causal checkpoint and its prepared corpus: set
PROTEINPERF_GENERATION_CHECKPOINT and PROTEINPERF_GENERATION_CORPUS; without them the
previous run's statistics (if any) are kept.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proteinperf.benchmarks._measure import (
    OtherLoad,
    machine_info,
    markdown_table,
    peak_rss_bytes,
)

SHAPE = dict(d_model=256, n_layers=6, n_heads=8, d_ff=1024, nb_features=256)
MIB = 2**20
TARGET_SPEEDUP_16K = 5.0
TARGET_STATE_GROWTH = 0.10
TARGET_MEMORY_GIB = 24.0
LOW_COMPLEXITY_RUN = 8
BLOCK = 4  # timed one-token steps in a row per model (after one untimed step)


@dataclass(frozen=True)
class Settings:
    positions: tuple[int, ...] = (1024, 4096, 16384, 32768)
    steps: int = 24  # timed one-token steps per position and model
    prefill_chunk: int = 1024
    samples: int = 200
    max_length: int = 1024
    natural: int = 200  # held-out proteins scored for the log-likelihood comparison


FULL = Settings()
QUICK = Settings(positions=(256, 1024), steps=8, samples=20, max_length=256, natural=20)


def _model(attention: str):
    from proteinperf.model import ModelConfig, PerformerLM

    torch.manual_seed(0)
    config = ModelConfig(**SHAPE, attention=attention, causal=True, dropout=0.0)
    return PerformerLM(config).eval()


def _timed(fn):
    """(result, CPU seconds, wall seconds): on a shared machine CPU time is the stable one."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def _steps_taken(steps: int) -> int:
    """One-token steps that ``_time_steps`` adds to each state."""
    return -(-steps // BLOCK) * (BLOCK + 1)


def _time_steps(runs: list[list], steps: int) -> list[tuple[float, float]]:
    """Median CPU and wall seconds of ``steps`` one-token steps for each [model, state] in
    ``runs`` (the states advance), the models taking turns in blocks (see module doc)."""
    token = torch.full((1, 1), 5, dtype=torch.long)
    cpu, wall = [[] for _ in runs], [[] for _ in runs]
    for _ in range(-(-steps // BLOCK)):
        for i, run in enumerate(runs):
            run[1] = run[0].step(token, run[1])[1]  # untimed: back to this model's data
            for _ in range(BLOCK):
                (_, run[1]), c, w = _timed(lambda m=run[0], s=run[1]: m.step(token, s))
                cpu[i].append(c)
                wall[i].append(w)
    return [(statistics.median(c), statistics.median(w)) for c, w in zip(cpu, wall)]


def _kv_state(model, position: int, extra: int):
    """A decoding state holding ``position`` random keys/values per exact layer."""
    from proteinperf.attention.recurrent import KVCache
    from proteinperf.model import DecodingState

    h, dh, cap = model.config.n_heads, model.config.head_dim, position + extra
    g = torch.Generator().manual_seed(position)
    layers = []
    for _ in range(model.config.n_layers):
        k, v = (torch.randn(1, h, cap, dh, generator=g) for _ in range(2))
        keep = torch.ones(1, cap, dtype=torch.bool)
        layers.append(KVCache(k, v, keep, position))
    return DecodingState(layers, torch.tensor([position]))


@torch.inference_mode()
def decoding(settings: Settings) -> list[dict]:
    performer, exact = _model("favor_softmax"), _model("softmax")
    rows, state, done = [], None, 0
    g = torch.Generator().manual_seed(0)
    for position in settings.positions:
        # Extend the Performer's state with real prefill up to ``position`` tokens.
        tokens = torch.randint(4, 24, (1, position - done), generator=g)
        _, state = performer.step(tokens, state, chunk_size=settings.prefill_chunk)
        kv_state = _kv_state(exact, position, _steps_taken(settings.steps))
        runs = [[performer, state], [exact, kv_state]]
        (performer_s, performer_wall), (kv_s, kv_wall) = _time_steps(runs, settings.steps)
        state, kv_state = runs[0][1], runs[1][1]
        done = int(state.positions[0])
        full = torch.randint(4, 24, (1, position + 1), generator=g)
        _, recompute_s, recompute_wall = _timed(lambda t=full: performer(t))
        rows.append(
            {
                "position": position,
                "performer_ms": 1e3 * performer_s,
                "kv_cache_ms": 1e3 * kv_s,
                "recompute_ms": 1e3 * recompute_s,
                "performer_state_bytes": state.nbytes(),
                "kv_cache_bytes": kv_state.nbytes(),
                "speedup_vs_kv": kv_s / performer_s,
                "wall_ms": {
                    "performer": 1e3 * performer_wall,
                    "kv_cache": 1e3 * kv_wall,
                    "recompute": 1e3 * recompute_wall,
                },
            }
        )
        print(f"  position {position}: {rows[-1]}", flush=True)
    return rows


# --------------------------------------------------------------------------- sample statistics


def _composition(sequences) -> np.ndarray:
    from proteinperf.data.alphabet import STANDARD_AMINO_ACIDS

    counts = np.zeros(len(STANDARD_AMINO_ACIDS))
    index = {a: i for i, a in enumerate(STANDARD_AMINO_ACIDS)}
    for seq in sequences:
        for a, c in zip(*np.unique(list(seq), return_counts=True)):
            if a in index:
                counts[index[a]] += c
    return counts / counts.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p + 1e-12, q + 1e-12
    return float(np.sum(p * np.log(p / q)))


def _low_complexity(seq: str, run: int = LOW_COMPLEXITY_RUN) -> bool:
    count = 1
    for a, b in zip(seq, seq[1:]):
        count = count + 1 if a == b else 1
        if count >= run:
            return True
    return False


def _lengths(sequences) -> dict:
    lengths = np.array([len(s) for s in sequences])
    return {
        "mean": float(lengths.mean()),
        "median": float(np.median(lengths)),
        "p10": float(np.percentile(lengths, 10)),
        "p90": float(np.percentile(lengths, 90)),
    }


@torch.inference_mode()
def sample_quality(checkpoint, corpus_dir, settings: Settings, seed: int = 0) -> dict:
    """Sample from ``checkpoint`` and compare with the corpus's train (composition) and test
    (held-out natural proteins) splits."""
    from proteinperf.checkpoint import load_model
    from proteinperf.data.alphabet import STANDARD_AMINO_ACIDS, get_alphabet
    from proteinperf.data.corpus import ProteinCorpus
    from proteinperf.inference.generate import generate
    from proteinperf.inference.likelihood import causal_log_probs

    model, _ = load_model(checkpoint, device=torch.device("cpu"))
    start = time.perf_counter()
    samples = generate(
        model, [""], n=settings.samples, max_length=settings.max_length, seed=seed, batch_size=50
    )
    sample_s = time.perf_counter() - start
    sampled = [s.sequence for s in samples]

    alphabet = get_alphabet()
    train = ProteinCorpus(corpus_dir, "train")
    counts = train.token_counts()[[alphabet.tok_to_idx[a] for a in STANDARD_AMINO_ACIDS]]
    train_freq = counts / counts.sum()
    test = ProteinCorpus(corpus_dir, "test")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(test), size=min(settings.natural, len(test)), replace=False)
    natural = [test.sequence(int(i))[: settings.max_length] for i in picked]
    natural = [s for s in natural if s and set(s) <= set(STANDARD_AMINO_ACIDS)]

    natural_ll = []
    for lo in range(0, len(natural), 16):
        natural_ll += [float(lp.mean()) for lp in causal_log_probs(model, natural[lo : lo + 16])]
    log_freq = dict(zip(STANDARD_AMINO_ACIDS, np.log(train_freq)))
    unigram_ll = [float(np.mean([log_freq[a] for a in s])) for s in natural]
    return {
        "checkpoint": str(checkpoint),
        "corpus": str(corpus_dir),
        "samples": len(sampled),
        "max_length": settings.max_length,
        "temperature": 1.0,
        "seed": seed,
        "sampling_s": sample_s,
        "residues_per_s": sum(map(len, sampled)) / sample_s,
        "natural_heldout": len(natural),
        "composition_kl_samples_vs_train": _kl(_composition(sampled), train_freq),
        "composition_kl_natural_vs_train": _kl(_composition(natural), train_freq),
        "lengths_samples": _lengths(sampled),
        "lengths_natural": _lengths(natural),
        "share_at_max_length": float(np.mean([len(s) >= settings.max_length for s in sampled])),
        "low_complexity_samples": float(np.mean([_low_complexity(s) for s in sampled])),
        "low_complexity_natural": float(np.mean([_low_complexity(s) for s in natural])),
        "mean_ll_samples": float(np.mean([s.mean_log_likelihood for s in samples])),
        "mean_ll_natural": float(np.mean(natural_ll)),
        "mean_ll_natural_unigram": float(np.mean(unigram_ll)),
        "examples": sampled[:3],
    }


# --------------------------------------------------------------------------- report


def _targets(rows: list[dict], peak_gib: float) -> list[dict]:
    by_pos = {r["position"]: r for r in rows}
    out = []
    if 16384 in by_pos:
        speedup = by_pos[16384]["speedup_vs_kv"]
        out.append(
            {
                "target": f"per-token speed-up vs KV cache at 16k >= {TARGET_SPEEDUP_16K}x",
                "value": f"{speedup:.1f}x",
                "met": speedup >= TARGET_SPEEDUP_16K,
            }
        )
    if 1024 in by_pos and 32768 in by_pos:
        growth = by_pos[32768]["performer_state_bytes"] / by_pos[1024]["performer_state_bytes"] - 1
        out.append(
            {
                "target": "Performer state growth 1k -> 32k <= 10%",
                "value": f"{100 * growth:.1f}%",
                "met": growth <= TARGET_STATE_GROWTH,
            }
        )
        out.append(
            {
                "target": f"32k positions within {TARGET_MEMORY_GIB:.0f} GiB",
                "value": f"peak RSS {peak_gib:.2f} GiB (CPU; no GPU measured)",
                "met": peak_gib < TARGET_MEMORY_GIB,
            }
        )
    return out


def _markdown(rows, targets, quality, load_line: str = "") -> str:
    table = markdown_table(
        [
            "position",
            "Performer CPU ms/token",
            "KV cache CPU ms/token",
            "recompute CPU ms/token",
            "speed-up vs KV",
            "Performer state",
            "KV cache",
        ],
        [
            [
                r["position"],
                f"{r['performer_ms']:.2f}",
                f"{r['kv_cache_ms']:.2f}",
                f"{r['recompute_ms']:.0f}",
                f"{r['speedup_vs_kv']:.1f}x",
                f"{r['performer_state_bytes'] / MIB:.2f} MiB",
                f"{r['kv_cache_bytes'] / MIB:.1f} MiB",
            ]
            for r in rows
        ],
    )
    parts = [
        table,
        *(["", load_line] if load_line else []),
        "",
        markdown_table(
            ["target", "measured", "met"],
            [[t["target"], t["value"], "yes" if t["met"] else "NO"] for t in targets],
        ),
    ]
    if quality and "mean_ll_samples" in quality:
        q = quality
        parts += [
            "",
            markdown_table(
                ["", f"{q['samples']} samples (T=1)", f"{q['natural_heldout']} held-out natural"],
                [
                    [
                        "composition KL vs train (nats)",
                        f"{q['composition_kl_samples_vs_train']:.4f}",
                        f"{q['composition_kl_natural_vs_train']:.4f}",
                    ],
                    [
                        "length mean / median",
                        f"{q['lengths_samples']['mean']:.0f} / "
                        f"{q['lengths_samples']['median']:.0f}",
                        f"{q['lengths_natural']['mean']:.0f} / "
                        f"{q['lengths_natural']['median']:.0f}",
                    ],
                    [
                        "length p10 - p90",
                        f"{q['lengths_samples']['p10']:.0f} - {q['lengths_samples']['p90']:.0f}",
                        f"{q['lengths_natural']['p10']:.0f} - {q['lengths_natural']['p90']:.0f}",
                    ],
                    [
                        f"share with a run of >= {LOW_COMPLEXITY_RUN} equal residues",
                        f"{100 * q['low_complexity_samples']:.1f}%",
                        f"{100 * q['low_complexity_natural']:.1f}%",
                    ],
                    [
                        "model's mean log-likelihood / residue",
                        f"{q['mean_ll_samples']:.3f}",
                        f"{q['mean_ll_natural']:.3f} (unigram: {q['mean_ll_natural_unigram']:.3f})",
                    ],
                ],
            ),
        ]
    return "\n".join(parts)


def run(quick: bool, out_dir: Path) -> dict:
    settings = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with OtherLoad() as load:
            start_cpu = time.process_time()
            rows = decoding(settings)
            cpu_s = time.process_time() - start_cpu
        peak_gib = peak_rss_bytes() / 2**30
        quality = _quality(settings, Path(out_dir), quick)
    finally:
        torch.set_num_threads(threads)
    targets = _targets(rows, peak_gib)
    machine = machine_info()
    return {
        "shape": {**SHAPE, "batch": 1, "dtype": "float32", "threads": 1},
        "settings": settings.__dict__,
        "machine": machine,
        "other_load_cpus": load.cpus,
        "decoding_cpu_s": cpu_s,
        "peak_rss_gib": peak_gib,
        "decoding": rows,
        "targets": targets,
        "quality": quality,
        "markdown": _markdown(rows, targets, quality, _load_line(machine, load.cpus)),
    }


def _load_line(machine: dict, other_cpus: float | None) -> str:
    """Where the times were taken: CPU times on a shared machine still feel its load."""
    one, five, _ = machine["load_average"]
    other = "" if other_cpus is None else f", other processes busy on {other_cpus:.1f} CPUs"
    return (
        f"Measured on {machine['cpu']} ({machine['cpu_count']} CPUs), load average {one:.1f} "
        f"(1 min) / {five:.1f} (5 min) at the end{other}."
    )


def _quality(settings: Settings, out_dir: Path, quick: bool) -> dict:
    checkpoint = os.environ.get("PROTEINPERF_GENERATION_CHECKPOINT")
    corpus = os.environ.get("PROTEINPERF_GENERATION_CORPUS")
    if checkpoint and corpus:
        return sample_quality(checkpoint, corpus, settings)
    previous = out_dir / "generation.json"
    if not quick and previous.exists():
        kept = json.loads(previous.read_text()).get("quality") or {}
        if "mean_ll_samples" in kept:
            return {**kept, "kept_from_previous_run": True}
    return {
        "status": "skipped",
        "reason": "set PROTEINPERF_GENERATION_CHECKPOINT and "
        "PROTEINPERF_GENERATION_CORPUS (a trained causal model and its prepared corpus)",
    }


__all__ = ["FULL", "QUICK", "Settings", "decoding", "run", "sample_quality"]
