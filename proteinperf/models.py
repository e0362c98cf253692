"""Named pretrained models: ``proteinperf.load_model("swissprot-performer-bid")``.

A named model is a weights-only model file ``<name>.pt`` (proteinperf checkpoint format, fp16
weights) with its model card ``<name>.json`` beside it, shipped in ``proteinperf/pretrained/``.
``PROTEINPERF_MODELS_DIR`` (folders separated by ``os.pathsep``) adds folders searched first.
Every command that takes a CHECKPOINT accepts a name, through
``proteinperf.checkpoint.resolve_checkpoint``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from proteinperf.atomic import atomic_output
from proteinperf.checksum import file_sha256
from proteinperf.errors import InputError

MODELS_DIR_ENV = "PROTEINPERF_MODELS_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent / "pretrained"
MAX_SHIPPED_MB = 15.0
# Model card fields (all optional but name): what `proteinperf models --json` lists.
CARD_FIELDS = (
    "objective",
    "attention",
    "data",
    "split",
    "steps",
    "seconds",
    "test",
    "far",
    "unigram",
    "parameters",
    "description",
    "limits",
    "sha256",
)


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(MODELS_DIR_ENV, "").split(os.pathsep) if p]
    return [*extra, PACKAGE_DIR]


def registry() -> dict[str, Path]:
    """{name: model file}; a name found in several folders resolves to the first."""
    out: dict[str, Path] = {}
    for folder in search_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.pt")):
                out.setdefault(path.stem, path)
    return out


def model_card(name: str) -> dict:
    """The card of a registered model: {name, path, objective, attention, ...}."""
    path = registry().get(name)
    if path is None:
        raise KeyError(unknown_name_message(name))
    card_file = path.with_suffix(".json")
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return {"name": name, "path": str(path), **{k: card.get(k) for k in CARD_FIELDS}, **card}


def list_models() -> list[dict]:
    return [model_card(name) for name in registry()]


def unknown_name_message(name: str) -> str:
    known = ", ".join(registry()) or "none installed"
    return f"{name}: no such file, and not a named pretrained model (known: {known})"


def resolve(name_or_path) -> Path:
    """The file of a registered name; anything else is returned as a Path unchanged."""
    path = Path(name_or_path)
    if path.exists():
        return path
    found = registry().get(str(name_or_path))
    return found if found is not None else path


def card_sha256(path) -> str | None:
    """The sha256 the card of a registered model file promises (None for any other file, or a
    card without one). Loading checks it: a damaged download or a few flipped bytes would
    otherwise load silently and give other numbers."""
    path = Path(path)
    registered = registry().get(path.stem)
    if registered is None or registered.resolve() != path.resolve():
        return None
    card_file = path.with_suffix(".json")
    if not card_file.is_file():
        return None
    return json.loads(card_file.read_text()).get("sha256")


def export_model(
    checkpoint,
    out,
    card: dict | None = None,
    dtype: torch.dtype = torch.float16,
    max_mb: float | None = MAX_SHIPPED_MB,
) -> Path:
    """Write ``checkpoint`` (Lightning .ckpt or model file) as a weights-only named model.

    ``out``: the model file (``<name>.pt``); its card (``card`` plus the checkpoint's objective
    and size) goes to ``<name>.json`` and also into the file. Floating weights are stored in
    ``dtype`` except the FAVOR+ random features (kept float32; they are a fixed draw). The
    training split's unigram_log_probs travel along so `evaluate` compares with the baseline.
    Raises InputError (nothing written) if the file would exceed ``max_mb`` or a weight
    would not fit in ``dtype`` (float16: beyond ±65504, saved as inf).
    """
    from proteinperf.checkpoint import checkpoint_metadata, load_model, save_model

    out = Path(out)
    model, _ = load_model(checkpoint)
    meta = checkpoint_metadata(checkpoint)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not name.endswith(".self_attn.features"):
            stored = tensor.data.to(dtype)
            if not bool(torch.isfinite(stored).all()):
                # float16 ends at 65504: a larger weight would be saved as inf (NaN results)
                largest = float(tensor.detach().abs().max())
                raise InputError(
                    f"{checkpoint}: weight {name} reaches {largest:.4g}, "
                    f"beyond {dtype}'s range ({torch.finfo(dtype).max:.4g}); export it in a "
                    "wider dtype (dtype=torch.bfloat16 or torch.float32)"
                )
            tensor.data = stored
    card = {
        "objective": meta.get("objective") or ("clm" if model.config.causal else "mlm"),
        "attention": model.config.attention,
        "parameters": sum(p.numel() for p in model.parameters()),
        **(card or {}),
    }
    extra = {"card": card, "objective": card["objective"]}
    if meta.get("unigram_log_probs") is not None:
        extra["unigram_log_probs"] = list(meta["unigram_log_probs"])
    # Both files or neither: the card is renamed into place just before the model.
    with atomic_output(out) as tmp, atomic_output(out.with_suffix(".json")) as card_tmp:
        save_model(tmp, model, extra=extra)
        size_mb = tmp.stat().st_size / 2**20
        if max_mb is not None and size_mb > max_mb:
            raise InputError(
                f"{out}: {size_mb:.1f} MB in {dtype}, more than {max_mb} MB (a smaller model, "
                "or max_mb=None for a file not to be shipped)"
            )
        card["size_mb"] = round(size_mb, 2)
        card["sha256"] = file_sha256(tmp)  # checked when the model is loaded by name
        card_tmp.write_text(json.dumps(card, indent=2) + "\n")
    return out


__all__ = [
    "CARD_FIELDS",
    "MODELS_DIR_ENV",
    "PACKAGE_DIR",
    "card_sha256",
    "export_model",
    "list_models",
    "model_card",
    "registry",
    "resolve",
    "search_dirs",
    "unknown_name_message",
]
