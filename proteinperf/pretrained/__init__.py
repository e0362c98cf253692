"""Named pretrained models: ``proteinperf.load_model("swissprot-performer-bid")``.

A named model is a weights-only model file ``<name>.pt`` (proteinperf checkpoint format, fp16
weights) with its model card ``<name>.json`` beside it, shipped in this folder.
``PROTEINPERF_MODELS_DIR`` (folders separated by ``os.pathsep``) adds folders searched first.
Every command that takes a CHECKPOINT accepts a name, through
``proteinperf.checkpoint.resolve_checkpoint``.

This module finds names and cards and imports nothing of the checkpoint code, which sits above
it; ``proteinperf.pretrained.export`` (above the checkpoint code) writes new named models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from proteinperf.checksum import file_sha256

MODELS_DIR_ENV = "PROTEINPERF_MODELS_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent
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


# (resolved path, size, mtime_ns) -> the sha256 of the bytes read then.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def model_file_sha256(path) -> str:
    """``file_sha256`` of a model file, read in full once per process for each (path, size,
    mtime_ns): loading a named model again (every call of an API user's loop) does not pay
    another pass over its bytes. A file replaced or rewritten gets a new size or mtime and is
    read again; an in-place edit that restores both within one process is not noticed."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = file_sha256(path)
    return digest


__all__ = [
    "CARD_FIELDS",
    "MODELS_DIR_ENV",
    "PACKAGE_DIR",
    "card_sha256",
    "list_models",
    "model_card",
    "model_file_sha256",
    "registry",
    "resolve",
    "search_dirs",
    "unknown_name_message",
]
