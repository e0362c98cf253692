"""The proteinperf checkpoint format: safe loading (weights_only), atomic saving, load_model.

A model file is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    {"format": "proteinperf-model", "format_version": 1, "alphabet": "ESM-1b",
     "model_config": dataclasses.asdict(ModelConfig), "state_dict": {...}, **extra}

``load_model`` also reads Lightning ``.ckpt`` files of the training module, which carry
``checkpoint["proteinperf"] = {"model_config": ..., "format_version": 1}`` and the model's
weights in ``state_dict`` under the ``model.`` prefix, and the Hugging Face folders that
``proteinperf export-hf`` writes (``read_hf_directory``): ``config.json`` holds the model config's
fields and, under ``"proteinperf"``, the format marker and the rest of the metadata;
``model.safetensors`` the weights under the ``model.`` prefix.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import torch

from proteinperf import pretrained
from proteinperf.atomic import atomic_output
from proteinperf.errors import ProteinperfError, require_extra
from proteinperf.model import ModelConfig, PerformerLM
from proteinperf.plain import plain

MODEL_FORMAT = "proteinperf-model"
MODEL_FORMAT_VERSION = 1
ALPHABET = "ESM-1b"
# A Lightning checkpoint of proteinperf.lightning_module.ProteinLM carries
# checkpoint[LIGHTNING_KEY] = lightning_metadata(...), and for exact resumption the RNG state
# and the optimizer step its random features were drawn at.
LIGHTNING_KEY = "proteinperf"
LIGHTNING_RNG_KEY = "proteinperf_rng"
LIGHTNING_DRAWN_AT_KEY = "proteinperf_drawn_at"
LIGHTNING_PREFIX = "model."
RESERVED_KEYS = ("format", "format_version", "model_config", "state_dict", "alphabet")
# A Hugging Face folder (proteinperf.interop.hf_export writes it, read_hf_directory reads it)
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_CONTACTS = "contact_regression.safetensors"  # a converted ESM-2's contact head, if any
HF_META_KEY = "proteinperf"  # config.json's entry: format, format_version, alphabet, card, ...
HF_PREFIX = "model."  # the transformers classes hold the PerformerLM as `model`
# Changing these gives a different set of feature buffers; the checkpoint's are then not used.
FEATURE_FIELDS = (
    "attention",
    "nb_features",
    "orthogonal_features",
    "feature_scaling",
    "n_heads",
    "d_model",
)


class CheckpointError(ProteinperfError, ValueError):
    """A checkpoint that is missing, unreadable, foreign or inconsistent (one line, names it)."""


def lightning_metadata(
    config: ModelConfig, objective: str, unigram_log_probs: list[float] | None = None
) -> dict:
    """The ``checkpoint[LIGHTNING_KEY]`` entry a training checkpoint carries."""
    meta = {
        "model_config": dataclasses.asdict(config),
        "objective": objective,
        "format_version": MODEL_FORMAT_VERSION,
    }
    if unigram_log_probs is not None:
        meta["unigram_log_probs"] = unigram_log_probs
    return meta


def _plain(value):
    """NumPy values inside metadata as plain Python (weights_only loading refuses them)."""
    return plain(value)


def save_model(path, model: PerformerLM, extra: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (proteinperf.atomic.atomic_output)."""
    path = Path(path)
    extra = _plain(dict(extra or {}))
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra checkpoint keys clash with the format's: {', '.join(clash)}")
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "model_config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "alphabet": ALPHABET,
        **extra,
    }
    with atomic_output(path, fsync=True) as tmp:
        torch.save(payload, tmp)
    return path


def resolve_checkpoint(name_or_path) -> Path:
    """The file of a checkpoint path or of a named pretrained model (proteinperf.pretrained);
    CheckpointError listing the known names if it is neither. A named model's file must have
    the sha256 its card promises (read once per process: pretrained.model_file_sha256)."""
    path = pretrained.resolve(name_or_path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {pretrained.unknown_name_message(str(name_or_path))}")
    expected = pretrained.card_sha256(path)
    if expected is not None and not path.is_dir():
        actual = pretrained.model_file_sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint {path}: sha256 {actual[:16]}... differs from its card's "
                f"{expected[:16]}...: the file is damaged; reinstall it or export it again"
            )
    return path


def read_checkpoint(path, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)`` with every failure turned into one CheckpointError."""
    path = resolve_checkpoint(path)
    if path.is_dir():
        if (path / HF_CONFIG).is_file() and (path / HF_WEIGHTS).is_file():
            return read_hf_directory(path)
        raise CheckpointError(
            f"checkpoint {path}: is a directory without {HF_CONFIG} and {HF_WEIGHTS}, not a "
            "model file or a folder written by `proteinperf export-hf`"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = str(err).strip().splitlines()
        unsafe = next((line.strip() for line in lines if "Unsupported global" in line), None)
        if unsafe is None:
            raise CheckpointError(f"checkpoint {path}: corrupt or not a PyTorch file") from err
        raise CheckpointError(
            f"checkpoint {path}: holds pickled Python objects that cannot be loaded safely "
            f"(weights_only): {unsafe.split(' was not')[0]}"
        ) from err
    except Exception as err:  # zip/EOF errors of a truncated or foreign file
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"checkpoint {path}: corrupt or not a PyTorch file ({type(err).__name__}: {detail})"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path}: not a proteinperf checkpoint (holds a {type(obj).__name__})"
        )
    return obj


def read_safetensors(path, error: type[ProteinperfError] = CheckpointError, where=None) -> dict:
    """The tensors of a safetensors file on the CPU; any failure is one ``error`` that starts
    with ``where`` (default "checkpoint PATH")."""
    where = where or f"checkpoint {path}"
    torch_io = require_extra("safetensors.torch", "hf", f"{where}: reading safetensors", error)
    from safetensors import SafetensorError  # imported with safetensors.torch

    try:
        return torch_io.load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(f"{where}: cannot be read, corrupt or not safetensors ({detail})") from err


def read_hf_directory(path) -> dict:
    """A folder written by ``export-hf`` as the dict ``read_checkpoint`` returns for a model
    file: weights from ``model.safetensors``, config and metadata from ``config.json``."""
    path = Path(path)
    try:
        config = json.loads((path / HF_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {path / HF_CONFIG}: not valid JSON ({err})") from err
    meta = config.get(HF_META_KEY) if isinstance(config, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: {HF_CONFIG} has no {HF_META_KEY!r} entry of format "
            f"{MODEL_FORMAT!r}; "
            "only folders written by `proteinperf export-hf` are read (for an ESM-2 folder, "
            "use `proteinperf convert-esm`)"
        )
    state = read_safetensors(path / HF_WEIGHTS)
    obj = {
        **meta,  # its "format" was checked above
        "model_config": {
            f.name: config[f.name] for f in dataclasses.fields(ModelConfig) if f.name in config
        },
        "state_dict": {k.removeprefix(HF_PREFIX): v for k, v in state.items()},
    }
    if (path / HF_CONTACTS).is_file():
        obj["contact_regression"] = read_safetensors(path / HF_CONTACTS)
    return obj


def _kind(obj: dict) -> str:
    if obj.get("format") == MODEL_FORMAT:
        return "model"
    if isinstance(obj.get(LIGHTNING_KEY), dict) and "state_dict" in obj:
        return "lightning"
    if "model" in obj and ("cfg" in obj or "args" in obj):
        return "fair-esm"
    return "foreign"


def _check_version(version, where: str) -> None:
    if version != MODEL_FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format_version {version!r}, this proteinperf reads {MODEL_FORMAT_VERSION}"
        )


def model_config_from_checkpoint(obj: dict, where: str = "checkpoint") -> dict:
    """The model_config dict of a loaded proteinperf model file or Lightning checkpoint."""
    kind = _kind(obj)
    if kind == "model":
        _check_version(obj.get("format_version"), where)
        if obj.get("alphabet", ALPHABET) != ALPHABET:
            raise CheckpointError(f"{where}: alphabet {obj['alphabet']!r}, expected {ALPHABET!r}")
        config = obj.get("model_config")
    elif kind == "lightning":
        meta = obj[LIGHTNING_KEY]
        _check_version(meta.get("format_version"), where)
        config = meta.get("model_config")
    elif kind == "fair-esm":
        raise CheckpointError(
            f"{where}: a fair-esm checkpoint, not a proteinperf one; convert it first with "
            "`proteinperf convert-esm`"
        )
    else:
        raise CheckpointError(f"{where}: not a proteinperf checkpoint (no 'format' marker)")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: model_config is missing or not a mapping")
    return config


def model_state_from_checkpoint(obj: dict, where: str = "checkpoint") -> dict:
    """The model's state_dict (Lightning's ``model.`` prefix stripped)."""
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: state_dict is missing or not a mapping")
    if _kind(obj) == "lightning":
        n = len(LIGHTNING_PREFIX)
        state = {k[n:]: v for k, v in state.items() if k.startswith(LIGHTNING_PREFIX)}
    return state


def model_with_weights(
    config: dict | ModelConfig,
    state_dict: dict,
    overrides: dict | None = None,
    feature_seed: int = 0,
    where: str = "checkpoint",
) -> PerformerLM:
    """A PerformerLM with ``config`` (+ ``overrides``) and the weights of ``state_dict``.

    Overrides that change the attention's feature buffers (e.g. softmax -> favor_softmax,
    another nb_features) keep every weight but draw fresh features from ``feature_seed``.
    """
    values = dataclasses.asdict(config) if isinstance(config, ModelConfig) else dict(config)
    base = dict(values)
    values.update(overrides or {})
    try:
        model_config = ModelConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from err
    model = PerformerLM(model_config)
    features_changed = any(base.get(k) != values.get(k) for k in FEATURE_FIELDS)
    state = dict(state_dict)
    if features_changed:
        model.redraw_features(feature_seed, 0)
        state = {k: v for k, v in state.items() if not k.endswith(".self_attn.features")}
        state.update(
            {k: v for k, v in model.state_dict().items() if k.endswith(".self_attn.features")}
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
            )
        raise CheckpointError(
            f"{where}: weights do not match the model config ({'; '.join(parts)})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{where}: weight {key} has shape {tuple(tensor.shape)}, the config expects "
                f"{tuple(expected[key].shape)}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{where}: weight {key} holds NaN or infinite values (a damaged file, or a "
                "run that diverged); it would give NaN results"
            )
    model.load_state_dict(state)
    return model


def _metadata(obj: dict) -> dict:
    kind = _kind(obj)
    if kind == "model":
        return {k: v for k, v in obj.items() if k not in ("state_dict", "format", "alphabet")}
    if kind == "lightning":
        return dict(obj[LIGHTNING_KEY])
    return {}


def checkpoint_metadata(path) -> dict:
    """What a checkpoint says besides its weights: a model file's extra keys, or the
    ``proteinperf`` entry of a Lightning checkpoint (model_config, objective, and from
    training runs ``unigram_log_probs``: the training split's residue log-frequencies)."""
    return _metadata(read_checkpoint(path, map_location="cpu"))


def load_model_and_metadata(
    path, device="cpu", overrides: dict | None = None, feature_seed: int = 0
) -> tuple[PerformerLM, object, dict]:
    """``load_model`` and ``checkpoint_metadata`` from one read of the file."""
    from proteinperf.data.alphabet import get_alphabet

    where = f"checkpoint {path}"
    obj = read_checkpoint(path, map_location="cpu")
    config = model_config_from_checkpoint(obj, where)
    state = model_state_from_checkpoint(obj, where)
    model = model_with_weights(config, state, overrides, feature_seed=feature_seed, where=where)
    return model.to(device).eval(), get_alphabet(), _metadata(obj)


def load_model(
    path, device="cpu", overrides: dict | None = None, feature_seed: int = 0
) -> tuple[PerformerLM, object]:
    """(model in eval mode on ``device``, alphabet) from a model file or Lightning checkpoint."""
    model, alphabet, _ = load_model_and_metadata(path, device, overrides, feature_seed)
    return model, alphabet


__all__ = [
    "CheckpointError",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "HF_CONFIG",
    "HF_WEIGHTS",
    "LIGHTNING_KEY",
    "checkpoint_metadata",
    "lightning_metadata",
    "load_model",
    "load_model_and_metadata",
    "model_config_from_checkpoint",
    "model_with_weights",
    "model_state_from_checkpoint",
    "read_checkpoint",
    "read_hf_directory",
    "read_safetensors",
    "resolve_checkpoint",
    "save_model",
]
