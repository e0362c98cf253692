"""Sampling proteins from a causal model with incremental (recurrent) decoding.

Each batch consumes its prompts (<cls> + residues, right-padded) in one chunked pass of
``PerformerLM.step`` and then adds one token per step: a FAVOR+ model carries a fixed-size
state, an exact-attention model a KV cache. Only the 20 standard amino acids and <eos> can be
drawn (<eos> not before ``min_length`` residues), so no special token lands inside a sequence.

Randomness is per sample: sample (p, i) draws from its own generator seeded with
mix_seed(seed, p, i), so a sample does not depend on the batch it was generated in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from proteinperf.constants import TEMPERATURE_RANGE
from proteinperf.data.alphabet import RESIDUES, STANDARD_AMINO_ACIDS, get_alphabet
from proteinperf.errors import ConfigError, InputError
from proteinperf.model import mix_seed

from .common import atomic_output, model_device


@dataclass
class Sample:
    prompt_index: int
    sample_index: int  # within its prompt
    seed: int  # the seed of this sample's generator
    sequence: str  # prompt + generated residues
    mean_log_likelihood: float  # mean over residues of log p(x_i | <cls>, x_<i), prompt included
    stopped: str  # "eos" or "length"


def check_generative(model, max_length: int) -> None:
    """A causal model whose positions reach ``max_length`` residues (one-line errors)."""
    config = model.config
    if not config.causal:
        raise ConfigError(
            "this is a bidirectional (masked) model: generation needs a causal model "
            "(trained with model=performer_causal or causal=true)"
        )
    if config.positional == "learned" and max_length + 1 > config.max_len:
        raise ConfigError(
            f"max length {max_length} residues needs {max_length + 1} positions but the model "
            f"has learned positions for {config.max_len} (use a max length <= "
            f"{config.max_len - 1})"
        )


def check_temperature(temperature: float) -> None:
    """0 (greedy) or a finite value in TEMPERATURE_RANGE; anything else samples from NaN."""
    low, high = TEMPERATURE_RANGE
    if not (temperature == 0 or low <= temperature <= high):
        raise ConfigError(
            f"temperature must be 0 (greedy) or between {low:g} and {high:g}, got {temperature}"
        )


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """(B, V) logits -> log-weights to sample from: temperature, then top-k, then nucleus."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -torch.inf))
    return logits


def _draw(log_weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling, one uniform per row: (B, V), (B,) -> (B,) token ids."""
    probs = log_weights.softmax(-1)
    cdf = probs.cumsum(-1)
    index = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    # Never land on a zero-probability token through rounding at the top of the CDF.
    index = index.clamp(max=probs.shape[-1] - 1)
    bad = probs.gather(-1, index[:, None]).squeeze(-1) == 0
    return torch.where(bad, probs.argmax(-1), index)


def _encode_prompts(prompts: Sequence[str]) -> list[list[int]]:
    alphabet = get_alphabet()
    encoded = []
    for i, prompt in enumerate(prompts):
        bad = next((c for c in prompt.upper() if c not in RESIDUES), None)
        if bad is not None:
            raise InputError(f"prompt {i + 1}: {bad!r} is not an amino-acid letter")
        encoded.append([alphabet.cls_idx, *alphabet.encode(prompt)])
    return encoded


@torch.inference_mode()
def generate(
    model,
    prompts: Sequence[str] = ("",),
    n: int = 1,
    max_length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    min_length: int = 1,
    batch_size: int = 16,
    progress=None,
) -> list[Sample]:
    """``n`` samples per prompt (prompt residues, "" = from <cls> alone), in prompt order.

    Lengths count residues, prompt included: a sample stops at <eos> or at ``max_length``;
    <eos> is held back until ``min_length``. temperature 0 is greedy decoding. ``progress``
    (a tqdm-like object) is advanced once per finished sample.
    """
    if n < 1 or batch_size < 1:
        raise ConfigError(f"n and batch_size must be positive, got {n} and {batch_size}")
    if max_length < 1 or not 0 <= min_length <= max_length:
        raise ConfigError(
            f"need 1 <= max length and 0 <= min length <= max length, got {min_length}, "
            f"{max_length}"
        )
    check_temperature(temperature)
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top-p must be in (0, 1], got {top_p}")
    check_generative(model, max_length)
    encoded = _encode_prompts(prompts)
    for i, ids in enumerate(encoded):
        if len(ids) - 1 > max_length:
            raise InputError(
                f"prompt {i + 1} has {len(ids) - 1} residues, more than max length {max_length}"
            )
    jobs = [(p, i) for p in range(len(encoded)) for i in range(n)]
    samples = []
    for lo in range(0, len(jobs), batch_size):
        batch = jobs[lo : lo + batch_size]
        samples += _generate_batch(
            model,
            [encoded[p] for p, _ in batch],
            [(p, i, mix_seed(seed, p, i)) for p, i in batch],
            max_length,
            min_length,
            temperature,
            top_k,
            top_p,
        )
        if progress is not None:
            progress.update(len(batch))
    return samples


def _generate_batch(model, prompts, ids, max_length, min_length, temperature, top_k, top_p):
    alphabet = get_alphabet()
    device = model_device(model)
    b = len(prompts)
    generators = [torch.Generator().manual_seed(s) for _, _, s in ids]

    width = max(len(t) for t in prompts)
    tokens = torch.full((b, width), alphabet.padding_idx, dtype=torch.long)
    for row, t in enumerate(prompts):
        tokens[row, : len(t)] = torch.tensor(t)
    tokens = tokens.to(device)
    real = tokens != alphabet.padding_idx
    logits, state = model.step(tokens, padding_mask=None if bool(real.all()) else real)
    log_probs = logits.float().log_softmax(-1)
    # log p of each prompt residue (positions 1..), and the logits after each prompt's end.
    seq_ll = [
        log_probs[row, : len(t) - 1].gather(-1, tokens[row, 1 : len(t), None]).sum().item()
        for row, t in enumerate(prompts)
    ]
    last = torch.tensor([len(t) - 1 for t in prompts], device=device)
    next_logits = logits[torch.arange(b, device=device), last].float()  # (B, V)

    allowed = torch.zeros(len(alphabet), dtype=torch.bool, device=device)
    allowed[[alphabet.tok_to_idx[a] for a in STANDARD_AMINO_ACIDS]] = True
    # Tokens that cannot be drawn (V,): before min_length [0] and from it on [1].
    blocked = {0: ~allowed, 1: ~allowed.clone()}
    blocked[1][alphabet.eos_idx] = False
    residues = [list(t[1:]) for t in prompts]
    stopped = [None] * b
    for row in range(b):
        if len(residues[row]) >= max_length:
            stopped[row] = "length"
    while not all(stopped):
        eos_ok = [int(len(r) >= min_length) for r in residues]
        if min(eos_ok) == max(eos_ok):
            masked = next_logits.masked_fill(blocked[eos_ok[0]], -torch.inf)
        else:
            masked = next_logits.masked_fill(
                torch.stack([blocked[ok] for ok in eos_ok]), -torch.inf
            )
        if temperature == 0:
            choice = masked.argmax(-1)
        else:
            uniforms = torch.stack([torch.rand((), generator=g) for g in generators])
            choice = _draw(filter_logits(masked, temperature, top_k, top_p), uniforms.to(device))
        step_ll = next_logits.log_softmax(-1).gather(-1, choice[:, None]).squeeze(-1).tolist()
        for row, token in enumerate(choice.tolist()):
            if stopped[row] is not None:
                continue
            if token == alphabet.eos_idx:
                stopped[row] = "eos"
                continue
            residues[row].append(token)
            seq_ll[row] += step_ll[row]
            if len(residues[row]) >= max_length:
                stopped[row] = "length"
        if all(stopped):
            break
        if any(stopped):  # finished rows feed padding, which leaves their state as it is
            active = torch.tensor([s is None for s in stopped], device=device)
            feed, keep = choice.masked_fill(~active, alphabet.padding_idx), active[:, None]
        else:
            feed, keep = choice, None
        logits, state = model.step(feed[:, None], state, padding_mask=keep)
        next_logits = logits[:, 0].float()

    return [
        Sample(
            prompt_index=p,
            sample_index=i,
            seed=s,
            sequence=alphabet.decode(residues[row]),
            mean_log_likelihood=seq_ll[row] / max(1, len(residues[row])),
            stopped=stopped[row],
        )
        for row, (p, i, s) in enumerate(ids)
    ]


def write_samples(samples: Sequence[Sample], path, seed: int, width: int = 60) -> Path:
    """FASTA of the samples, written atomically; headers carry index, prompt, seed, length,
    mean log-likelihood per residue and why the sample stopped."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        for k, s in enumerate(samples):
            f.write(
                f">sample_{k} index={k} prompt={s.prompt_index} prompt_sample={s.sample_index} "
                f"seed={seed} length={len(s.sequence)} "
                f"mean_log_likelihood={s.mean_log_likelihood:.4f} stop={s.stopped}\n"
            )
            for lo in range(0, len(s.sequence), width):
                f.write(s.sequence[lo : lo + width] + "\n")
    return Path(path)


__all__ = [
    "Sample",
    "check_generative",
    "check_temperature",
    "filter_logits",
    "generate",
    "write_samples",
]
