"""Contact maps from attention, ESM's recipe (Rao et al., 2021): every layer's and head's
attention map, without <cls>/<eos>, symmetrised and APC-corrected, into a logistic regression.

The regression is the one fair-esm trained for ESM-2; converted checkpoints carry it as
``contact_regression`` = {"weight": (1, layers·heads), "bias": (1,)}. The regression is linear,
so the L×L logits are accumulated one (layer, head) map at a time: beside the output only one
head's map is alive, O(L²) memory, never (layers, heads, L, L). FAVOR+ models use their
implicit attention D⁻¹φ(Q)φ(K)ᵀ (the matrix their forward applies without forming it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from proteinperf.analysis.attention_maps import attention_inputs, frame_sequence
from proteinperf.attention import favor_attention_weights, softmax_attention_weights
from proteinperf.checkpoint import CheckpointError, read_checkpoint
from proteinperf.constants import CONTACT_FORMATS
from proteinperf.data.alphabet import get_alphabet
from proteinperf.errors import ConfigError, InputError

from .common import atomic_output, check_length, model_device, progress, read_records
from .writers import INDEX_FILE, NameAllocator

FORMATS = CONTACT_FORMATS
MIN_SEPARATION = 6  # |i − j| below this is trivially in contact (ESM's short range starts at 6)


def read_contact_regression(path) -> dict:
    """{"weight", "bias"} of a checkpoint's contact head (kept by `convert-esm`)."""
    obj = read_checkpoint(path)
    regression = obj.get("contact_regression")
    if not isinstance(regression, dict) or not {"weight", "bias"} <= set(regression):
        raise CheckpointError(
            f"checkpoint {path}: no contact head (contact_regression); convert an ESM-2 model "
            "with `proteinperf convert-esm`, which keeps it, or borrow one with --contact-head"
        )
    for key in ("weight", "bias"):
        if not bool(torch.isfinite(regression[key]).all()):
            raise CheckpointError(
                f"checkpoint {path}: contact_regression.{key} holds NaN or infinite values "
                "(a damaged file); it would give NaN maps"
            )
    return {"weight": regression["weight"].float(), "bias": regression["bias"].float()}


def check_regression(model, regression: dict, where: str = "contact head") -> None:
    n = model.config.n_layers * model.config.n_heads
    if regression["weight"].numel() != n:
        raise InputError(
            f"{where}: {regression['weight'].numel()} regression weights, but the model has "
            f"{model.config.n_layers} layers x {model.config.n_heads} heads = {n} maps"
        )


def apc(x: torch.Tensor) -> torch.Tensor:
    """Average product correction: x_ij − (Σ_k x_ik)(Σ_k x_kj) / Σ_kl x_kl."""
    return x - x.sum(-1, keepdim=True) * x.sum(-2, keepdim=True) / x.sum((-1, -2), keepdim=True)


def head_attention(layer, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(1, 1, T, T) attention of one head as the model applies it (implicit for FAVOR+)."""
    if layer.is_favor:
        return favor_attention_weights(
            q, k, layer.features, causal=layer.causal, kernel=layer.kernel
        )
    return softmax_attention_weights(q, k, causal=layer.causal)


@torch.no_grad()
def predict_contacts(model, sequence: str, regression: dict) -> torch.Tensor:
    """(L, L) contact probabilities of one protein, float32 on the CPU."""
    check_regression(model, regression)
    check_length(model, len(sequence), "sequence")
    device = model_device(model)
    config = model.config
    tokens = frame_sequence(sequence, get_alphabet()).to(device)  # (1, L + 2)
    weight = regression["weight"].view(config.n_layers, config.n_heads).to(device)
    length = len(sequence)
    logits = torch.full((length, length), float(regression["bias"]), device=device)
    for i, (q, k) in enumerate(attention_inputs(model, tokens)):  # q, k: (1, H, L + 2, dh)
        layer = model.attention_layers[i]
        for h in range(config.n_heads):
            a = head_attention(layer, q[:, h : h + 1], k[:, h : h + 1])[0, 0, 1:-1, 1:-1]
            logits += weight[i, h] * apc(a + a.T)  # (L, L)
    return torch.sigmoid(logits).cpu()


def top_contacts(probs: torch.Tensor, n: int | None = None, min_separation: int = MIN_SEPARATION):
    """The ``n`` (default L) most probable pairs i < j with j − i ≥ ``min_separation``:
    (i, j, p) with 1-based residue numbers, most probable first."""
    length = probs.shape[0]
    n = length if n is None else n
    i, j = torch.triu_indices(length, length, offset=max(min_separation, 1))
    p = probs[i, j]
    order = torch.argsort(p, descending=True, stable=True)[:n]
    return (i[order] + 1).numpy(), (j[order] + 1).numpy(), p[order].numpy()


def plot_contacts(probs: np.ndarray, top: tuple, title: str, path: Path) -> None:
    """The probability map (upper triangle) beside the top-L contacts (lower triangle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    shown = np.triu(probs)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0, origin="upper")
    i, j, _ = top
    ax.scatter(i - 1, j - 1, s=4, c="tab:red", marker="s", linewidths=0, label="top-L")
    ax.set(title=title, xlabel="residue", ylabel="residue")
    ax.legend(loc="upper right", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8, label="contact probability")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_contacts(
    model,
    regression: dict,
    fasta,
    out_dir,
    *,
    fmt: str = "npz",
    plot: bool = False,
    min_separation: int = MIN_SEPARATION,
    truncate: int | None = None,
    invalid: str = "error",
    quiet: bool = True,
) -> dict:
    """Per protein: the map (<name>.npz or <name>.csv), top-L contacts (<name>.top.csv),
    with ``plot`` a PNG; index.csv maps ids to names. The folder appears only when complete."""
    import pandas as pd

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got {fmt!r}")
    check_regression(model, regression)
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INDEX_FILE).exists():
        raise InputError(
            f"output {out_dir} is a non-empty directory that is not an earlier contacts output "
            f"(no {INDEX_FILE}); choose another path"
        )
    # The whole input is read and checked before the first map is computed (a bad record at
    # the end of a large file fails in seconds, not after hours of maps).
    residues = 0
    for record in read_records(fasta, truncate=truncate, invalid=invalid):
        check_length(model, len(record.sequence), f"record '{record.id}'")
        residues += len(record.sequence)
    names = NameAllocator(files=True)
    index = []
    bar = progress(quiet, "contacts", total=residues)
    with atomic_output(out_dir, directory=True) as tmp, bar:
        for record in read_records(fasta, truncate=truncate, invalid=invalid):
            name = names(record.id)
            probs = predict_contacts(model, record.sequence, regression)
            top = top_contacts(probs, min_separation=min_separation)
            array = probs.numpy()
            if fmt == "npz":
                np.savez(tmp / f"{name}.npz", probabilities=array, sequence=record.sequence)
            else:
                np.savetxt(tmp / f"{name}.csv", array, fmt="%.6g", delimiter=",")
            pd.DataFrame({"i": top[0], "j": top[1], "p": top[2]}).to_csv(
                tmp / f"{name}.top.csv", index=False, float_format="%.6g"
            )
            if plot:
                plot_contacts(array, top, record.id, tmp / f"{name}.png")
            index.append({"id": record.id, "name": name, "length": len(record.sequence)})
            bar.update(len(record.sequence))
        pd.DataFrame(index, columns=["id", "name", "length"]).to_csv(tmp / INDEX_FILE, index=False)
    return {"records": len(index), "output": str(out_dir), "format": fmt}


__all__ = [
    "apc",
    "check_regression",
    "head_attention",
    "plot_contacts",
    "predict_contacts",
    "read_contact_regression",
    "top_contacts",
    "write_contacts",
]
