"""Embed a FASTA file: per-token, mean and <cls> representations of chosen layers.

Conventions follow fair-esm's ``esm-extract``: layer 0 is the token embedding, layer n the
output of the final LayerNorm; per-token vectors cover the residues only (no <cls>/<eos>),
the mean is over those residues, and ``bos`` is the <cls> position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proteinperf.atomic import check_free_space, check_target
from proteinperf.constants import EMBED_INCLUDES
from proteinperf.errors import ConfigError
from proteinperf.layers import LayerDict
from proteinperf.layers import resolve_layers as _resolve_layers

from .common import (
    DEFAULT_TOKS_PER_BATCH,
    atomic_output,
    autocast,
    check_length,
    encode_batch,
    length_limit,
    model_device,
)
from .writers import (
    FORMATS,
    WRITERS,
    NameAllocator,
    check_replaceable_dir,
    record_arrays,
    stored_bytes,
)

INCLUDES = EMBED_INCLUDES
KINDS = {
    "per-token": "representations",
    "mean": "mean_representations",
    "bos": "bos_representations",
}


def resolve_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Layer numbers in 0..n_layers (0 = token embeddings); negative ones count from the end
    (-1 = last). The numbering is proteinperf.layers'."""
    return _resolve_layers(layers, n_layers, embeddings=True)


def check_include(include: Sequence[str]) -> list[str]:
    unknown = sorted(set(include) - set(INCLUDES))
    if unknown or not include:
        raise ConfigError(
            f"--include takes one or more of {', '.join(INCLUDES)}, got "
            f"{', '.join(unknown) or 'nothing'}"
        )
    return [kind for kind in INCLUDES if kind in include]


def embed_sequences(
    model,
    sequences: Sequence[str],
    layers: Sequence[int] = (-1,),
    include: Sequence[str] = ("mean",),
    precision: str = "fp32",
) -> list[dict]:
    """One padded forward; per sequence {"length", kind: {layer: float32 CPU tensor}}.

    ``layers`` as everywhere (0 = token embeddings, -1 = the last block); each kind's dict is
    keyed 0..n_layers and also answers to the negative numbers.
    """
    layers = resolve_layers(layers, model.config.n_layers)
    include = check_include(include)
    tokens, mask = encode_batch(sequences, torch.device("cpu"))
    lengths = [len(seq) for seq in sequences]
    return embed_tokens(model, tokens, mask, lengths, layers, include, precision)


@torch.inference_mode()
def embed_tokens(
    model,
    tokens: torch.Tensor,  # (B, W) from common.encode_batch
    mask: torch.Tensor,  # (B, W) bool, True = real token
    lengths: Sequence[int],  # residues per row
    layers: Sequence[int],  # resolved: 0..n_layers
    include: Sequence[str] = ("mean",),
    precision: str = "fp32",
) -> list[dict]:
    """``embed_sequences`` of sequences already tokenised (in a DataLoader worker, say)."""
    n_layers = model.config.n_layers
    device = model_device(model)
    tokens, mask = tokens.to(device), mask.to(device)
    with autocast(device, precision):
        reps = model(tokens, padding_mask=mask, repr_layers=layers)["representations"]
    results = [{"length": n} for n in lengths]
    for layer in layers:
        rep = reps[layer].float()  # (B, W, d)
        for row, n in enumerate(lengths):
            residues = rep[row, 1 : n + 1]
            vectors = {"per-token": residues, "mean": residues.mean(0), "bos": rep[row, 0]}
            for kind in include:
                kind_layers = results[row].setdefault(KINDS[kind], LayerDict(n_layers))
                kind_layers[layer] = vectors[kind].cpu()
    return results


def encode_result(result: dict) -> bytes:
    """One record's arrays as float32 bytes, in the writers' fixed (kind, layer) order."""
    return b"".join(array.astype(np.float32).tobytes() for _, _, array in record_arrays(result))


def decode_result(payload: bytes, length: int, layers: Sequence[int], include) -> dict:
    """Inverse of ``encode_result`` given the record's length and the run's layers/include."""
    kinds = [KINDS[kind] for kind in INCLUDES if kind in include]
    rows = sum(length if kind == "representations" else 1 for kind in kinds) * len(layers)
    flat = np.frombuffer(payload, dtype=np.float32)
    dim = flat.size // rows
    result: dict = {"length": length}
    offset = 0
    for kind in ("representations", "mean_representations", "bos_representations"):
        if kind not in kinds:
            continue
        shape = (length, dim) if kind == "representations" else (dim,)
        size = int(np.prod(shape))
        for layer in sorted(layers):
            array = flat[offset : offset + size].reshape(shape).copy()
            result.setdefault(kind, {})[layer] = torch.from_numpy(array)
            offset += size
    return result


@dataclass
class EmbedTask:
    """What a run (``runner.run_task``) computes per batch, and how the output is written."""

    layers: list[int]
    include: list[str]
    precision: str
    toks_per_batch: int
    fmt: str
    metadata: dict
    name: str = "embed"

    def settings(self) -> dict:
        return {
            "layers": self.layers,
            "include": self.include,
            "precision": self.precision,
            "toks_per_batch": self.toks_per_batch,
        }

    def cost(self, lengths: list[int]) -> int:
        return len(lengths) * (max(lengths) + 2)  # padded tokens: linear attention

    def prepare(self, sequences: list[str]) -> dict:
        """Run where the batches are made (a DataLoader worker): the token tensors."""
        tokens, mask = encode_batch(sequences, torch.device("cpu"))
        return {"tokens": tokens, "mask": mask}

    def compute(self, model, batch: dict) -> list[tuple[bytes, dict]]:
        results = embed_tokens(model, batch["tokens"], batch["mask"], batch["lengths"],
                               self.layers, self.include, self.precision)  # fmt: skip
        return [(encode_result(result), {}) for result in results]

    def merge(self, store, records, done: dict, output: Path) -> None:
        # The shards stay until the output is complete, so it needs its own room beside them:
        # refused here (the shards kept, for --resume) rather than after filling the disk.
        needed = sum(stored_bytes(entry.nbytes, self.fmt) for entry in done.values())
        check_free_space(output, needed + (64 << 10), then=store.kept_note)
        allocate = NameAllocator(files=self.fmt == "pt-dir")
        names = [allocate(record_id) for record_id in records.ids]
        with atomic_output(output, directory=self.fmt == "pt-dir") as tmp:
            writer = WRITERS[self.fmt](tmp, self.metadata)
            try:
                for index, (record_id, name) in enumerate(zip(records.ids, names)):
                    entry = done[index]
                    result = decode_result(
                        store.read(entry), entry.length, self.layers, self.include
                    )
                    writer.add(name, record_id, result)
            except BaseException:
                writer.abort()
                raise
            writer.close(records.ids, names)
        store.close()


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
    on_duplicate: str = "error",
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str | None = None,
    resume: bool = False,
) -> dict:
    """Embed every record of ``fasta`` into ``output`` (written atomically); returns a summary.

    Records are read in windows, sorted by length inside a window and batched under a token
    budget. A small input on one device runs in this process (``runner.run_local``); a large
    one, ``devices`` x ``num_nodes`` > 1 or ``resume`` takes the bulk path (``bulk.run_bulk``,
    through Lightning's predict loop on several processes): the batches are spread over the
    ranks, each rank writes a shard beside the output and rank 0 merges them in input order;
    ``resume`` continues an interrupted run from its shards. Both paths write the same bytes.
    The summary has records, residues, seconds, residues_per_s, per-rank residues and ``rank``
    (only rank 0 wrote the output).
    """
    from .fasta_index import Source
    from .runner import run_task

    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    layers = resolve_layers(layers, model.config.n_layers)
    include = check_include(include)
    output = Path(output)
    if fmt == "pt-dir":
        check_replaceable_dir(output)
    else:
        check_target(output)
    if toks_per_batch < 1:
        raise ConfigError(f"--toks-per-batch must be positive, got {toks_per_batch}")
    metadata = {"layers": layers, "include": include, **(metadata or {})}

    def too_long(record_id: str, length: int) -> None:
        check_length(model, length, f"record '{record_id}'")

    source = Source(str(fasta), truncate, invalid, on_duplicate, length_limit(model), too_long)
    task = EmbedTask(layers, include, precision, toks_per_batch, fmt, metadata)
    return run_task(
        model,
        task,
        source,
        output,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        accelerator=accelerator,
        resume=resume,
        quiet=quiet,
    )
