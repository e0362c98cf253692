"""Section ``train``: training throughput of the paper-size bidirectional and causal models.

A plain optimizer loop (the project's AdamW from ``proteinperf.optim``, bf16 autocast, the
paper's gradient clip) over random windows of L tokens cut from the corpus's proteins joined
end to end (<cls> residues <eos> <cls> ...; no padding, so every position is a real token).
Bidirectional: masked LM (15%, BERT's 80/10/10); causal: next token. The last 5% of the joined
corpus is held out: a few fixed windows of it are scored before and after training. The random
features stay as drawn (the paper redraws them every 1000 steps, more than a minute's run).

Model FLOPs per token (the usual 6N for a forward and backward through N matmul weights, plus
attention, which has no weights):
    6·(Σ Linear weights + V·d)  +  3·n_layers·A,
    A (FAVOR+, forward) = 4·m·d  (φ(q), φ(k): d → m per head)
                        + 4·m·(d + H)  (φ(K)ᵀ[V 1] and φ(Q)·that, with the denominator column)
    A (exact softmax)   = 4·L·d, halved when causal (QKᵀ and PV over the visible keys)
MFU = FLOPs/token × tokens/s ÷ the GPU's dense bf16 peak.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .device import is_cuda, release, synchronize
from .env import peak_bf16_tflops

HELD_OUT = 0.05
WARMUP_STEPS = 3  # untimed: allocator growth, cuBLAS/cuDNN heuristics, Triton compilation
MIN_RUN_S = 1.0
MODELS = (("bidirectional", False, "mlm"), ("causal", True, "clm"))


def flop_formula() -> str:
    return (
        "6*(sum of Linear weights + vocab*d) + 3*n_layers*A per token; "
        "A = 4*m*d + 4*m*(d + heads) for FAVOR+, 4*L*d (causal: 2*L*d) for exact softmax"
    )


def flops_per_token(model: torch.nn.Module, length: int) -> float:
    config = model.config
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    weights += config.vocab_size * config.d_model  # the LM head's projection onto the vocabulary
    d, m = config.d_model, config.nb_features
    if config.favor_kernel is None:
        attention = 4 * length * d / (2 if config.causal else 1)
    else:
        attention = 4 * m * d + 4 * m * (d + config.n_heads)
    return 6 * weights + 3 * config.n_layers * attention


# ----------------------------------------------------------------------------- data


def default_corpus() -> Path:
    from proteinperf.resources import data_dir

    return data_dir() / "swissprot_20k.fasta.gz"


def load_stream(path: Path, max_residues: int) -> np.ndarray:
    """Every protein of a FASTA file (any compression) or prepared corpus directory, framed
    <cls> residues <eos> and joined: uint8 token ids, at most ~max_residues of them."""
    from proteinperf.data.alphabet import INVALID, get_alphabet
    from proteinperf.data.sampling import frame

    alphabet = get_alphabet()
    pieces, total = [], 0
    if path.is_dir():
        from proteinperf.data.corpus import ProteinCorpus

        corpus = ProteinCorpus(path, "train")
        records = (corpus.tokens(i) for i in range(len(corpus)))
    else:
        from proteinperf.data.fasta import read_fasta

        def encoded():
            for record in read_fasta(path, invalid="unk"):
                ids = alphabet.lut[np.frombuffer(record.sequence.encode(), np.uint8)]
                yield np.where(ids == INVALID, alphabet.unk_idx, ids)

        records = encoded()
    for residues in records:
        pieces.append(frame(residues).astype(np.uint8))
        total += pieces[-1].size
        if total >= max_residues:
            break
    if not pieces:
        raise ValueError(f"{path}: no proteins")
    return np.concatenate(pieces)


def make_batch(stream, starts, length, objective, rng, mask_prob, train=True):
    from proteinperf.data.sampling import clm_example, collate, mlm_example

    examples = []
    for start in starts:
        tokens = stream[start : start + length].astype(np.int64)
        if objective == "mlm":
            examples.append(mlm_example(tokens, rng, mask_prob, corrupt=train))
        else:
            examples.append(clm_example(tokens))
    return collate(examples)


def _to(batch: dict, device: torch.device) -> dict:
    cuda = is_cuda(device)
    return {  # tensors to the device; host-side flags (the collate's "padded") stay as they are
        k: (v.pin_memory() if cuda else v).to(device, non_blocking=True)
        if isinstance(v, torch.Tensor)
        else v
        for k, v in batch.items()
    }


# ----------------------------------------------------------------------------- one model


def _loss(model, batch, autocast):
    from proteinperf.data.sampling import IGNORE

    with autocast():
        # the collate knows on the host whether there is padding: no device read per step
        logits = model(batch["tokens"], batch["padding_mask"], padded=batch.get("padded"))["logits"]
    return F.cross_entropy(
        logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE
    )


@torch.no_grad()
def _held_out_loss(model, batches, autocast) -> float:
    model.eval()
    from proteinperf.data.sampling import IGNORE

    total = count = 0.0
    for batch in batches:
        n = float((batch["targets"] != IGNORE).sum())
        total += float(_loss(model, batch, autocast)) * n
        count += n
    model.train()
    return total / max(count, 1.0)


def _unigram_loss(stream: np.ndarray, batches) -> float:
    """Cross-entropy of always predicting the corpus's token frequencies: the level a model
    reaches by learning frequencies alone."""
    from proteinperf.data.sampling import IGNORE

    counts = np.bincount(stream, minlength=64).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    targets = np.concatenate([b["targets"].cpu().numpy().ravel() for b in batches])
    targets = targets[targets != IGNORE]
    return float(-log_p[targets].mean())


def train_one(name, causal, objective, stream, settings, run_s, device, peak):
    from proteinperf.model import ModelConfig, PerformerLM
    from proteinperf.optim import build_optimizer

    t = settings.train
    release(device)  # the previous model's memory, so that this one's peak is its own
    torch.manual_seed(settings.seed)
    config = ModelConfig(**{**t.model, "causal": causal, "dropout": t.dropout})
    model = PerformerLM(config).to(device).train()
    optim = {"lr": t.lr, "schedule": "constant", "warmup_steps": t.warmup_steps}
    built = build_optimizer(model.parameters(), optim, math.inf)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    rng = np.random.default_rng([settings.seed, int(causal)])
    train_end = int(stream.size * (1 - HELD_OUT)) - t.length
    held_rng = np.random.default_rng([settings.seed, 7])
    held_starts = held_rng.integers(
        train_end + t.length, stream.size - t.length, (t.eval_batches, t.batch)
    )
    held_out = [
        _to(make_batch(stream, s, t.length, objective, held_rng, t.mask_prob, False), device)
        for s in held_starts
    ]

    def next_batch():
        starts = rng.integers(0, train_end, t.batch)
        return _to(make_batch(stream, starts, t.length, objective, rng, t.mask_prob), device)

    def step(batch):
        loss = _loss(model, batch, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip)
        optimizer.step()
        scheduler.step()
        return loss.detach()

    result = {
        "model": name,
        "objective": objective,
        "config": {**t.model, "causal": causal, "dropout": t.dropout},
        "parameters": model.num_parameters(),
        "batch": t.batch,
        "length": t.length,
        "flops_per_token": flops_per_token(model, t.length),
        "held_out_loss_start": _held_out_loss(model, held_out, autocast),
        "unigram_loss": _unigram_loss(stream, held_out),
    }
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    batch = next_batch()
    for _ in range(WARMUP_STEPS):
        losses.append(step(batch))
        batch = next_batch()
    synchronize(device)
    start = time.monotonic()
    timed = 0
    while time.monotonic() - start < run_s:
        losses.append(step(batch))
        batch = next_batch()  # prepared while the device works on the step just launched
        timed += 1
    synchronize(device)
    elapsed = time.monotonic() - start
    losses = torch.stack(losses).float().cpu().tolist()
    window = min(t.loss_window, max(len(losses) // 2, 1))
    tokens_per_s = timed * t.batch * t.length / elapsed
    achieved = result["flops_per_token"] * tokens_per_s / 1e12
    result.update(
        {
            "steps": len(losses),
            "timed_steps": timed,
            "timed_s": elapsed,
            "step_ms": elapsed / max(timed, 1) * 1e3,
            "tokens_per_s": tokens_per_s,
            "achieved_tflops": achieved,
            "mfu": achieved / peak if peak else None,
            "loss_start": float(np.mean(losses[:window])),
            "loss_end": float(np.mean(losses[-window:])),
            "losses": losses,
            "held_out_loss_end": _held_out_loss(model, held_out, autocast),
            "peak_memory_gib": (
                torch.cuda.max_memory_allocated(device) / 2**30 if is_cuda(device) else None
            ),
        }
    )
    result["loss_decreased"] = (
        result["loss_end"] < result["loss_start"]
        and result["held_out_loss_end"] < result["held_out_loss_start"]
    )
    return result


def run(settings, deadline: float, record) -> dict:
    device = torch.device(settings.device)
    t = settings.train
    corpus = Path(settings.corpus) if settings.corpus else default_corpus()
    peak = settings.peak_tflops
    if peak is None and is_cuda(device):
        peak = peak_bf16_tflops(torch.cuda.get_device_name(device))
    result = {
        "corpus": str(corpus),
        "flop_formula": flop_formula(),
        "peak_bf16_tflops": peak,
        "precision": "bf16 autocast, fp32 weights and AdamW state",
        "train_s": settings.train_s,
        "runs": [],
    }
    record(result)
    start = time.monotonic()
    stream = load_stream(corpus, t.max_residues)
    if stream.size * HELD_OUT < 2 * t.length:
        raise ValueError(
            f"{corpus}: {stream.size} tokens are too few for windows of {t.length} and a "
            f"{HELD_OUT:.0%} held-out part"
        )
    result["corpus_tokens"] = int(stream.size)
    result["load_s"] = time.monotonic() - start
    record(result)
    for i, (name, causal, objective) in enumerate(MODELS):
        left = len(MODELS) - i
        # Building, warm-up and the held-out scoring take time beside the measured run.
        overhead_s = 10.0 if settings.dry_run else 30.0
        run_s = min(settings.train_s / len(MODELS), (deadline - time.time()) / left - overhead_s)
        if run_s < MIN_RUN_S:
            result["runs"].append({"model": name, "status": "skipped", "reason": "time box spent"})
        else:
            result["runs"].append(
                {
                    "status": "ok",
                    **train_one(name, causal, objective, stream, settings, run_s, device, peak),
                }
            )
        record(result)
    return result
