"""How close an ESM-2 model converted to FAVOR+ stays to the original, as m grows.

Two ESM-2-shaped softmax models are converted without any fine-tuning:
  * random-init ``esm2_t6_8M`` shape (6 layers, d=320, 20 heads): the real architecture, but
    random weights are a weak proxy (near-uniform attention is easy to approximate);
  * a 2-layer d=64 ESM-2 trained briefly (plain torch MLM loop) on data/sample_proteins.fasta: real
    (if shallow) attention patterns.
On held-out sequences with 15% of positions replaced by <mask>, it reports per masked position
KL(original || converted) of the output distributions and top-1 agreement, for favor_softmax
(an unbiased softmax estimator, error -> 0 as m grows) and favor_relu (a different kernel, whose
gap does not close with m: it needs the fine-tuning of experiment=esm2_to_performer).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from proteinperf import resources

SAMPLE = resources.data_dir() / "sample_proteins.fasta"


@dataclass(frozen=True)
class Settings:
    features: tuple[int, ...]
    kernels: tuple[str, ...]
    seeds: int  # feature draws averaged per (kernel, m)
    eval_sequences: int
    max_len: int  # tokens incl. <cls>/<eos>
    train_seconds: float  # CPU seconds of this process (not wall time: the machine may be busy)
    train_steps: int
    batch_size: int = 8
    train_len: int = 128
    mask_prob: float = 0.15
    models: tuple[str, ...] = ("random_t6", "trained")


FULL = Settings((16, 64, 256, 1024), ("favor_softmax", "favor_relu"), 2, 48, 256, 120.0, 600)
QUICK = Settings((16, 64, 256), ("favor_softmax", "favor_relu"), 1, 16, 128, 20.0, 100)


def _sequences(path: Path) -> list[str]:
    from proteinperf.data.fasta import read_fasta

    return [record.sequence for record in read_fasta(path)]


def _encode(seqs: list[str], max_len: int, generator: torch.Generator) -> torch.Tensor:
    """(B, L) framed tokens, a random window of max_len - 2 residues, right-padded."""
    from proteinperf.data.alphabet import get_alphabet

    alphabet = get_alphabet()
    rows = []
    for seq in seqs:
        if len(seq) > max_len - 2:
            start = int(torch.randint(len(seq) - max_len + 3, (1,), generator=generator))
            seq = seq[start : start + max_len - 2]
        rows.append(torch.tensor(alphabet.encode_framed(seq)))
    return torch.nn.utils.rnn.pad_sequence(
        rows, batch_first=True, padding_value=alphabet.padding_idx
    )


def _mask(tokens: torch.Tensor, prob: float, generator: torch.Generator):
    """Replace ``prob`` of the residues by <mask>: (masked tokens, bool positions)."""
    from proteinperf.data.alphabet import get_alphabet

    alphabet = get_alphabet()
    residue = tokens >= 4  # not <cls>/<pad>/<eos>/<unk>
    chosen = (torch.rand(tokens.shape, generator=generator) < prob) & residue
    return tokens.masked_fill(chosen, alphabet.mask_idx), chosen


def _esm2(layers: int, dim: int, heads: int, seed: int):
    import esm

    torch.manual_seed(seed)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    return esm.model.esm2.ESM2(
        num_layers=layers,
        embed_dim=dim,
        attention_heads=heads,
        alphabet=alphabet,
        token_dropout=True,
    )


def _train_tiny(seqs: list[str], s: Settings) -> tuple[torch.nn.Module, dict]:
    """A 2-layer ESM-2 trained with MLM for at most ``train_seconds``."""
    model = _esm2(2, 64, 4, seed=0).train()
    with torch.no_grad():  # fair-esm's N(0, 1) embeddings start the tied logits far too large
        model.embed_tokens.weight.normal_(std=0.02)
    lr, warmup = 3e-3, 20
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    start, cpu_start, step, losses = time.monotonic(), time.process_time(), 0, []
    while step < s.train_steps and time.process_time() - cpu_start < s.train_seconds:
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        idx = torch.randint(len(seqs), (s.batch_size,), generator=generator)
        tokens = _encode([seqs[i] for i in idx], s.train_len, generator)
        masked, chosen = _mask(tokens, s.mask_prob, generator)
        logits = model(masked)["logits"]
        loss = F.cross_entropy(logits[chosen], tokens[chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
    tail = losses[-20:]
    info = {
        "steps": step,
        "seconds": round(time.monotonic() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "final_train_loss": round(sum(tail) / len(tail), 4),
    }
    return model.eval(), info


@torch.no_grad()
def _log_probs(model, batches) -> list[torch.Tensor]:
    """Log-probabilities (N_masked, V) at the masked positions of each batch, float64."""
    out = []
    for masked, chosen, _ in batches:
        logits = model(masked)["logits"]
        out.append(torch.log_softmax(logits[chosen].double(), dim=-1))
    return out


def _compare(reference: list[torch.Tensor], other: list[torch.Tensor], targets) -> dict:
    p, q = torch.cat(reference), torch.cat(other)
    kl = (p.exp() * (p - q)).sum(-1)
    return {
        "kl": kl.mean().item(),
        "top1_agreement": (p.argmax(-1) == q.argmax(-1)).double().mean().item(),
        "accuracy": (q.argmax(-1) == torch.cat(targets)).double().mean().item(),
    }


def _evaluate(name: str, esm_model, batches, s: Settings) -> list[dict]:
    from proteinperf.interop.esm import performer_from_esm_model

    targets = [tokens[chosen] for _, chosen, tokens in batches]
    reference = _log_probs(esm_model, batches)
    exact = _compare(reference, _log_probs(performer_from_esm_model(esm_model), batches), targets)
    rows = [{"model": name, "attention": "softmax (converted)", "m": None, **exact}]
    for kernel in s.kernels:
        for m in s.features:
            runs = [
                _compare(
                    reference,
                    _log_probs(performer_from_esm_model(esm_model, kernel, m, seed=seed), batches),
                    targets,
                )
                for seed in range(s.seeds)
            ]
            row = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
            row["kl_std"] = _std([r["kl"] for r in runs])
            rows.append({"model": name, "attention": kernel, "m": m, **row})
    return rows


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _table(rows: list[dict], setup: str) -> str:
    lines = [
        f"### ESM-2 -> Performer without fine-tuning ({setup})",
        "",
        "| model | attention | m | KL(orig ‖ conv) per masked pos. | top-1 agreement | "
        "masked accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        kl = f"{r['kl']:.4f}" + (f" ± {r['kl_std']:.4f}" if r.get("kl_std") else "")
        lines.append(
            f"| {r['model']} | {r['attention']} | {r['m'] or '-'} | {kl} | "
            f"{r['top1_agreement']:.3f} | {r['accuracy']:.3f} |"
        )
    return "\n".join(lines)


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> dict:
    s = settings or (QUICK if quick else FULL)
    started = time.monotonic()
    seqs = _sequences(SAMPLE)
    train_seqs, eval_seqs = seqs[: -s.eval_sequences], seqs[-s.eval_sequences :]
    generator = torch.Generator().manual_seed(1234)
    batches = []
    for i in range(0, len(eval_seqs), 8):
        tokens = _encode(eval_seqs[i : i + 8], s.max_len, generator)
        masked, chosen = _mask(tokens, s.mask_prob, generator)
        batches.append((masked, chosen, tokens))

    rows, training = [], {"steps": 0, "seconds": 0.0}
    if "random_t6" in s.models:
        random_t6 = _esm2(6, 320, 20, seed=0).eval()
        rows += _evaluate("esm2_t6_8M shape, random init", random_t6, batches, s)
    if "trained" in s.models:
        trained, training = _train_tiny(train_seqs, s)
        rows += _evaluate("ESM-2 2x64, trained on sample", trained, batches, s)

    n_masked = sum(int(chosen.sum()) for _, chosen, _ in batches)
    setup = (
        f"{len(eval_seqs)} held-out sample proteins, ≤{s.max_len} tokens, {n_masked} "
        f"masked positions; mean of {s.seeds} feature draw(s); 2-layer model trained "
        f"{training['steps']} steps in {training['seconds']} s"
    )
    return {
        "settings": {k: getattr(s, k) for k in s.__dataclass_fields__},
        "training": training,
        "masked_positions": n_masked,
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
        "markdown": _table(rows, setup),
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="random_t6,trained")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    settings = replace(base, models=tuple(args.models.split(",")))
    result = run(args.quick, Path("benchmarks/results"), settings)
    print(result["markdown"])
    print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1)[:2000])
