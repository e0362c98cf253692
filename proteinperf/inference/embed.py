"""Embed a FASTA file: per-token, mean and <cls> representations of chosen layers.

Conventions follow fair-esm's ``esm-extract``: layer 0 is the token embedding, layer n the
output of the final LayerNorm; per-token vectors cover the residues only (no <cls>/<eos>),
the mean is over those residues, and ``bos`` is the <cls> position.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .common import (
    DEFAULT_TOKS_PER_BATCH,
    atomic_output,
    autocast,
    check_length,
    encode_batch,
    model_device,
    plan_batches,
    progress,
    read_records,
    windows,
)
from .writers import FORMATS, WRITERS, NameAllocator, check_replaceable_dir

INCLUDES = ("mean", "per-token", "bos")
KINDS = {
    "per-token": "representations",
    "mean": "mean_representations",
    "bos": "bos_representations",
}


def resolve_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Layer indices in 0..n_layers; negative ones count from the end (-1 = last)."""
    resolved: list[int] = []
    for layer in layers:
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(
                f"layer {layer} does not exist: this model has layers 0..{n_layers} (0 = token "
                f"embeddings) or -{n_layers + 1}..-1 counted from the end"
            )
        layer %= n_layers + 1
        if layer not in resolved:
            resolved.append(layer)
    return resolved


def check_include(include: Sequence[str]) -> list[str]:
    unknown = sorted(set(include) - set(INCLUDES))
    if unknown or not include:
        raise ValueError(
            f"--include takes one or more of {', '.join(INCLUDES)}, got "
            f"{', '.join(unknown) or 'nothing'}"
        )
    return [kind for kind in INCLUDES if kind in include]


@torch.inference_mode()
def embed_sequences(
    model,
    sequences: Sequence[str],
    layers: Sequence[int],
    include: Sequence[str] = ("mean",),
    precision: str = "fp32",
) -> list[dict]:
    """One padded forward; per sequence {"length", kind: {layer: float32 CPU tensor}}."""
    device = model_device(model)
    tokens, mask = encode_batch(sequences, device)
    with autocast(device, precision):
        reps = model(tokens, padding_mask=mask, repr_layers=layers)["representations"]
    results = [{"length": len(seq)} for seq in sequences]
    for layer in layers:
        rep = reps[layer].float()  # (B, W, d)
        for row, seq in enumerate(sequences):
            residues = rep[row, 1 : len(seq) + 1]
            vectors = {"per-token": residues, "mean": residues.mean(0), "bos": rep[row, 0]}
            for kind in include:
                results[row].setdefault(KINDS[kind], {})[layer] = vectors[kind].cpu()
    return results


def embed_fasta(
    model,
    fasta,
    output,
    *,
    layers: Sequence[int] = (-1,),
    include: Sequence[str] = ("mean",),
    fmt: str = "h5",
    toks_per_batch: int = DEFAULT_TOKS_PER_BATCH,
    truncate: int | None = None,
    invalid: str = "error",
    precision: str = "fp32",
    quiet: bool = False,
    metadata: dict | None = None,
) -> dict:
    """Embed every record of ``fasta`` into ``output`` (written atomically); returns counts.

    Records are read in windows, sorted by length inside a window and batched under a token
    budget, and written as they are computed; the output's index lists the ids in input order.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    layers = resolve_layers(layers, model.config.n_layers)
    include = check_include(include)
    output = Path(output)
    if fmt == "pt-dir":
        check_replaceable_dir(output)
    metadata = {"layers": layers, "include": include, **(metadata or {})}
    allocate = NameAllocator(files=fmt == "pt-dir")
    ids: list[str] = []
    names: list[str] = []
    residues = 0
    records = read_records(fasta, truncate, invalid)
    with atomic_output(output, directory=fmt == "pt-dir") as tmp, progress(quiet, "embed") as bar:
        writer = WRITERS[fmt](tmp, metadata)
        try:
            for window in windows(records):
                for record in window:
                    check_length(model, len(record.sequence), f"record '{record.id}'")
                window_names = [allocate(record.id) for record in window]
                ids += [record.id for record in window]
                names += window_names
                lengths = [len(record.sequence) for record in window]
                for batch in plan_batches(lengths, toks_per_batch):
                    results = embed_sequences(
                        model, [window[i].sequence for i in batch], layers, include, precision
                    )
                    for i, result in zip(batch, results):
                        writer.add(window_names[i], window[i].id, result)
                    done = sum(lengths[i] for i in batch)
                    residues += done
                    bar.update(done)
                bar.set_postfix(records=len(ids), refresh=False)
        except BaseException:
            writer.abort()
            raise
        writer.close(ids, names)
    return {"records": len(ids), "residues": residues, "output": str(output)}
