"""Shared inference plumbing: devices, precision, reading, token-budget batching, atomic outputs.

Everything here is independent of what is computed; embed.py, score.py and mutations.py build
on it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from proteinperf.atomic import atomic_output  # noqa: F401 (its old home; embed, score, ...)
from proteinperf.constants import DEFAULT_TOKS_PER_BATCH, DEVICES, PRECISIONS  # noqa: F401
from proteinperf.data.alphabet import get_alphabet
from proteinperf.data.fasta import DataError, FastaRecord, read_fasta
from proteinperf.errors import ConfigError, InputError

# Records read ahead and sorted by length together: bounds memory on huge FASTA files while
# still grouping similar lengths (the padding waste of a sorted window of thousands is small).
WINDOW_RESIDUES = 1 << 22
WINDOW_RECORDS = 1 << 16


# ----------------------------------------------------------------------------- device, precision


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def model_hash(model: torch.nn.Module) -> str:
    """Digest of the weights and buffers (random features included): resume needs the same."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def resolve_accelerator(accelerator: str | None, model) -> str:
    """The device type a run uses: ``accelerator``, or the model's where it is None/auto."""
    if accelerator in (None, "auto"):
        return model_device(model).type
    return accelerator


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device, precision: str):
    """bf16 autocast (matmuls in bfloat16, reductions and FAVOR features stay float32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- input


def read_records(
    path, truncate: int | None = None, invalid: str = "error"
) -> Iterator[FastaRecord]:
    """FASTA records, validated (``invalid``: 'error' names file:line of a bad residue, 'unk'
    keeps it as <unk>, 'skip-record' drops the record), truncated to the first ``truncate``
    residues if given; an empty file or an empty record is an error."""
    if truncate is not None and truncate < 1:
        raise ConfigError(f"--truncate must be a positive number of residues, got {truncate}")
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file")
    for record in read_fasta(path, invalid=invalid):
        if not record.sequence:
            raise DataError(f"{path}:{record.line}: record '{record.id}' has no residues")
        if truncate is not None and len(record.sequence) > truncate:
            record = FastaRecord(
                record.id, record.description, record.sequence[:truncate], record.line
            )
        yield record


def check_length(model, n_residues: int, what: str) -> None:
    """Learned positions stop at max_len tokens; rotary/sinusoidal models have no limit."""
    config = model.config
    if config.positional == "learned" and n_residues + 2 > config.max_len:
        raise InputError(
            f"{what}: {n_residues} residues + <cls>/<eos> exceed the model's max_len "
            f"{config.max_len} (learned positions); use --truncate {config.max_len - 2}"
        )


def length_limit(model) -> int | None:
    """The most residues a record may have for ``check_length`` (None: no limit)."""
    config = model.config
    return config.max_len - 2 if config.positional == "learned" else None


def windows(
    records: Iterable, max_residues: int = WINDOW_RESIDUES, max_records: int = WINDOW_RECORDS
) -> Iterator[list]:
    """Consecutive lists of records holding about ``max_residues`` residues each."""
    window, residues = [], 0
    for record in records:
        window.append(record)
        residues += len(record.sequence)
        if residues >= max_residues or len(window) >= max_records:
            yield window
            window, residues = [], 0
    if window:
        yield window


# ----------------------------------------------------------------------------- batching


def length_sorted_batches(
    lengths: Sequence[int], toks_per_batch: int, extra: int = 2
) -> list[list[int]]:
    """Indices grouped longest first so that each batch's padded size (n · (max_len + extra))
    stays within ``toks_per_batch``; a sequence longer than the budget gets a batch alone."""
    if toks_per_batch < 1:
        raise ConfigError(f"--toks-per-batch must be positive, got {toks_per_batch}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        # Longest first: a batch's first member sets its padded width.
        if batches and (len(batches[-1]) + 1) * (lengths[batches[-1][0]] + extra) <= toks_per_batch:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def window_bounds(lengths: Sequence[int]) -> Iterator[tuple[int, int]]:
    """[start, end) of the windows ``common.windows`` makes of records with these lengths."""
    start, residues = 0, 0
    for i, n in enumerate(lengths):
        residues += n
        if residues >= WINDOW_RESIDUES or i + 1 - start >= WINDOW_RECORDS:
            yield start, i + 1
            start, residues = i + 1, 0
    if start < len(lengths):
        yield start, len(lengths)


def assign_batches(lengths, toks_per_batch, cost, world, done=frozenset()):
    """(window start, end, [(rank, [record indices])]) per window; finished batches left out.

    Greedy: each batch (longest first) goes to the rank with the least ``cost`` so far.
    """
    loads = [0] * world
    for start, end in window_bounds(lengths):
        window = lengths[start:end]
        plan = []
        for batch in length_sorted_batches(window, toks_per_batch):
            indices = [start + i for i in batch]
            if all(i in done for i in indices):
                continue
            rank = min(range(world), key=loads.__getitem__)
            loads[rank] += cost([window[i] for i in batch])
            plan.append((rank, indices))
        yield start, end, plan


def plan_tokens(task) -> int:
    """The token budget batches are planned with: a task may plan its own (pseudo-log-likelihood
    scores one record per batch, so progress and --resume move after every protein)."""
    return getattr(task, "plan_tokens", task.toks_per_batch)


def encode_batch(
    sequences: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max L + 2) tokens <cls> seq <eos> right-padded with <pad>, and the bool real mask."""
    alphabet = get_alphabet()
    width = max(len(s) for s in sequences) + 2
    tokens = torch.full((len(sequences), width), alphabet.padding_idx, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq) + 2] = torch.tensor(alphabet.encode_framed(seq), dtype=torch.long)
    tokens = tokens.to(device)
    return tokens, tokens != alphabet.padding_idx


# ----------------------------------------------------------------------------- output


def progress(quiet: bool, desc: str, unit: str = "res", total: int | None = None):
    """A tqdm bar on stderr counting residues (rate = residues/s); disabled by ``quiet``."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=quiet,
        dynamic_ncols=True,
        smoothing=0.1,
    )
