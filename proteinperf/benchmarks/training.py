"""Training benchmark: throughput and peak memory of one optimizer step on this CPU.

A small bidirectional model (2 layers, d=256, 4 heads of 64, d_ff=1024, m=256 features),
batch 1, float32, 2 threads, MLM loss on 15% of the positions, AdamW, gradient clipping:
the Performer (FAVOR+ with the ReLU and the softmax kernel) against the same Transformer with
exact attention (SDPA), at L=1024 and L=8192. Every case runs in a fresh worker process
(``_measure.run_case``); its peak memory is the rise of resident memory over the baseline of
the built model and optimizer (a warm-up step at L=64 has allocated the optimizer state), so
it is the memory of the step's activations and gradients. Target: at L=8192 the Performer
trains at least 2.5x faster than the Transformer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from proteinperf.benchmarks._measure import machine_info, markdown_table, run_case
from proteinperf.data.sampling import IGNORE

ATTENTIONS = ("favor_relu", "favor_softmax", "softmax")
LABELS = {
    "favor_relu": "Performer (FAVOR+ ReLU)",
    "favor_softmax": "Performer (FAVOR+ softmax)",
    "softmax": "Transformer (exact, SDPA)",
}
TARGET_LENGTH, TARGET_SPEEDUP = 8192, 2.5
GIB = 2**30


@dataclass(frozen=True)
class Settings:
    lengths: tuple[int, ...] = (1024, 8192)
    attentions: tuple[str, ...] = ATTENTIONS
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 1024
    nb_features: int = 256
    batch: int = 1
    repeats: int = 3
    case_budget_s: float = 60.0  # timed repeats of one case stop once this much time is spent
    timeout_s: float = 600.0
    mem_limit_gib: float = 16.0
    quiet_wait_s: float = 10.0  # before each case, wait up to this long for an idle machine


FULL = Settings()
QUICK = Settings(
    lengths=(256, 1024),
    d_model=128,
    n_heads=2,
    d_ff=512,
    nb_features=64,
    repeats=2,
    case_budget_s=10.0,
    timeout_s=180.0,
    quiet_wait_s=0.0,
)


def build_case(
    attention: str,
    length: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    d_ff: int,
    nb_features: int,
    batch: int,
):
    """Worker target of ``_measure.run_case``: (prepare, step) for one training configuration."""
    import torch
    import torch.nn.functional as F

    from proteinperf.data.alphabet import get_alphabet
    from proteinperf.model import ModelConfig, PerformerLM

    alphabet = get_alphabet()
    torch.manual_seed(0)
    config = ModelConfig(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_ff=d_ff,
        dropout=0.1,
        attention=attention,
        nb_features=nb_features,
        max_len=length,
        positional="rotary",
    )
    model = PerformerLM(config).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.1
    )

    def make_batch(n: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(n)
        residues = torch.tensor(alphabet.residue_token_ids)
        tokens = residues[torch.randint(len(residues), (batch, n), generator=g)]
        tokens[:, 0], tokens[:, -1] = alphabet.cls_idx, alphabet.eos_idx
        targets = torch.full_like(tokens, IGNORE)
        chosen = torch.rand(batch, n, generator=g) < 0.15
        targets[chosen] = tokens[chosen]
        tokens = tokens.masked_fill(chosen, alphabet.mask_idx)
        return {"tokens": tokens, "targets": targets}

    def step(inputs: dict[str, torch.Tensor]) -> float:
        logits = model(inputs["tokens"])["logits"]
        loss = F.cross_entropy(
            logits.flatten(0, 1), inputs["targets"].flatten(), ignore_index=IGNORE
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        return float(loss.detach())

    step(make_batch(64))  # allocates the optimizer state: part of the baseline, not the peak
    return (lambda: make_batch(length)), step


def _row(case: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
    if case["status"] != "ok":
        return [
            LABELS[case["attention"]],
            str(case["length"]),
            "-",
            "-",
            "-",
            f"{case['status']}: {case.get('reason', '')}",
        ]
    speedup = ""
    if reference and reference.get("status") == "ok" and case["attention"] != "softmax":
        speedup = f"{case['tokens_per_s'] / reference['tokens_per_s']:.2f}x"
    busy = case.get("other_cpus")
    note = f" (other load {busy:.1f} CPUs)" if busy is not None and busy >= 0.5 else ""
    return [
        LABELS[case["attention"]],
        str(case["length"]),
        f"{case['tokens_per_s']:,.0f}",
        f"{case['median_s']:.3f}",
        f"{case['peak_mib']:,.0f}",
        speedup + note,
    ]


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> dict:
    """Measure every (attention, length) case once; the returned dict is the JSON."""
    s = settings or (QUICK if quick else FULL)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_kwargs = dict(
        d_model=s.d_model,
        n_layers=s.n_layers,
        n_heads=s.n_heads,
        d_ff=s.d_ff,
        nb_features=s.nb_features,
        batch=s.batch,
    )
    cases = []
    for length in s.lengths:
        for attention in s.attentions:
            print(f"  training step: {attention} L={length}", flush=True)
            result = run_case(
                f"{__name__}:build_case",
                {"attention": attention, "length": length, **model_kwargs},
                repeats=s.repeats,
                budget_s=s.case_budget_s,
                timeout_s=s.timeout_s,
                mem_limit_bytes=int(s.mem_limit_gib * GIB),
                quiet_wait_s=s.quiet_wait_s,
            )
            case = {"attention": attention, "length": length, **result}
            if result["status"] == "ok":
                case["tokens_per_s"] = s.batch * length / result["median_s"]
            cases.append(case)

    def find(attention: str, length: int) -> dict[str, Any] | None:
        return next(
            (c for c in cases if (c["attention"], c["length"]) == (attention, length)), None
        )

    speedups: dict[str, dict[str, float]] = {}
    for length in s.lengths:
        ref = find("softmax", length)
        for attention in s.attentions:
            case = find(attention, length)
            if attention != "softmax" and ref and case and ref["status"] == case["status"] == "ok":
                speedups.setdefault(str(length), {})[attention] = (
                    case["tokens_per_s"] / ref["tokens_per_s"]
                )
    at_target = speedups.get(str(TARGET_LENGTH), {})
    target = {
        "length": TARGET_LENGTH,
        "min_speedup": TARGET_SPEEDUP,
        "speedups": at_target,
        "met": bool(at_target) and min(at_target.values()) >= TARGET_SPEEDUP,
        "measured": TARGET_LENGTH in s.lengths,
    }
    headers = ["model", "L", "tokens/s", "step (s)", "peak MiB", "speed-up vs Transformer"]
    rows = [_row(c, find("softmax", c["length"])) for c in cases]
    model_text = (
        f"{s.n_layers} layers, d={s.d_model}, {s.n_heads} heads, d_ff={s.d_ff}, "
        f"m={s.nb_features}, batch {s.batch}"
    )
    markdown = f"Training step (forward + backward + AdamW), {model_text}, float32, 2 threads\n\n"
    markdown += markdown_table(headers, rows)
    if target["measured"]:
        verdict = "met" if target["met"] else "NOT met"
        markdown += (
            f"\n\nTarget: Performer >= {TARGET_SPEEDUP}x the Transformer's tokens/s at "
            f"L={TARGET_LENGTH}: {verdict}."
        )
    return {
        "settings": asdict(s),
        "machine": machine_info(),
        "cases": cases,
        "speedups": speedups,
        "target": target,
        "markdown": markdown,
    }
