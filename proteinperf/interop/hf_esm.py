"""Hugging Face ESM-2 directories (``EsmForMaskedLM.save_pretrained``) as fair-esm state dicts.

transformers' ESM-2 is fair-esm's under other names: the same pre-LayerNorm blocks, rotary q/k
(query scaled before the rotation), final LayerNorm, RoBERTa LM head and token dropout. So a
directory is read into fair-esm's key names and hyper-parameters and converted by the same code
and checks as a fair-esm file (``esm.performer_from_esm_state``); transformers is not needed,
only ``safetensors`` for ``model.safetensors``. The contact regression is kept as for fair-esm.

transformers itself rescales token dropout by the tokens its ``attention_mask`` counts (all of
them without a mask); fair-esm and proteinperf count the non-padding tokens, which is what
transformers computes whenever the mask is passed, as its tokenizer does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from proteinperf.checkpoint import read_safetensors
from proteinperf.data.alphabet import get_alphabet
from proteinperf.interop.esm import (
    CONTACT_KEYS,
    ESMConversionError,
    performer_from_esm_state,
    save_converted,
)

CONFIG_FILE = "config.json"
# save_pretrained writes one of these (the index files name the shards of a large model)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
VOCAB_FILE = "vocab.txt"  # EsmTokenizer's, when the tokenizer was saved beside the model

# transformers' names -> fair-esm's, after the "esm." prefix (anchored at the start)
_RENAMES = (
    (r"embeddings\.word_embeddings\.", "embed_tokens."),
    (r"encoder\.emb_layer_norm_after\.", "emb_layer_norm_after."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
    (
        r"encoder\.layer\.(\d+)\.attention\.self\.rotary_embeddings\.",
        r"layers.\1.self_attn.rot_emb.",
    ),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.LayerNorm\.", r"layers.\1.self_attn_layer_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"encoder\.layer\.(\d+)\.LayerNorm\.", r"layers.\1.final_layer_norm."),
    (r"contact_head\.regression\.", "contact_head.regression."),
)
# transformers 5 keeps one rotary inv_freq for all layers, saved under the layer wildcard;
# fair-esm has one per layer (each then checked with the weights, float32 or float16)
SHARED_INV_FREQ = re.compile(
    r"esm\.(encoder\.layer\.\*\.attention\.self\.)?rotary_embeddings\.inv_freq"
)
# EsmConfig's defaults, for keys an older config.json leaves out
_DEFAULTS = {
    "position_embedding_type": "absolute",
    "emb_layer_norm_before": None,
    "token_dropout": False,
    "layer_norm_eps": 1e-12,
    "rope_theta": 10000.0,
    "hidden_act": "gelu",
}


def is_hf_directory(source) -> bool:
    """A directory (transformers' save_pretrained layout) rather than a file or a model name."""
    return Path(source).is_dir()


def fair_esm_name(key: str) -> str:
    """fair-esm's name of a transformers ESM key; an unknown key is returned unchanged (the
    layout check then reports it)."""
    # transformers 5 writes LayerNorm parameters under BERT's legacy names
    key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
    if key == "lm_head.decoder.weight":
        return "lm_head.weight"
    if key.startswith("lm_head."):
        return key
    body = key.removeprefix("esm.")
    for pattern, replacement in _RENAMES:
        renamed, n = re.subn("^" + pattern, replacement, body)
        if n:
            return renamed
    return key


def hf_hyperparameters(config: dict, where: str) -> dict:
    """fair-esm's encoder_* settings of an ESM-2 config.json; anything else is refused."""

    def get(name):
        return config.get(name, _DEFAULTS.get(name))

    if config.get("model_type") != "esm":
        raise ESMConversionError(
            f"{where}: model_type {config.get('model_type')!r}, not a transformers ESM model"
        )
    if config.get("is_folding_model"):
        raise ESMConversionError(f"{where}: an ESMFold model, only ESM-2 language models convert")
    if get("position_embedding_type") != "rotary" or get("emb_layer_norm_before"):
        raise ESMConversionError(
            f"{where}: position_embedding_type {get('position_embedding_type')!r} "
            f"(emb_layer_norm_before {get('emb_layer_norm_before')}): an ESM-1/ESM-1b-style "
            "model, only rotary ESM-2 models are supported"
        )
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise ESMConversionError(f"{where}: a decoder / cross-attention ESM, not ESM-2")
    if float(get("rope_theta")) != 10000.0 or get("hidden_act") != "gelu":
        raise ESMConversionError(
            f"{where}: rope_theta {get('rope_theta')} / hidden_act {get('hidden_act')!r}; "
            "ESM-2 uses 10000 and gelu"
        )
    alphabet = get_alphabet()
    for name, ours in (
        ("vocab_size", len(alphabet)),
        ("pad_token_id", alphabet.padding_idx),
        ("mask_token_id", alphabet.mask_idx),
    ):
        if config.get(name) is not None and config[name] != ours:
            raise ESMConversionError(f"{where}: {name} {config[name]}, ESM-2's alphabet has {ours}")
    if config.get("vocab_list") is not None and list(config["vocab_list"]) != alphabet.tokens:
        raise ESMConversionError(f"{where}: vocab_list differs from ESM-2's alphabet")
    missing = [
        k
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
        if not isinstance(config.get(k), int)
    ]
    if missing:
        raise ESMConversionError(f"{where}: {', '.join(missing)} missing")
    return {
        "encoder_layers": config["num_hidden_layers"],
        "encoder_embed_dim": config["hidden_size"],
        "encoder_attention_heads": config["num_attention_heads"],
        "token_dropout": bool(get("token_dropout")),
        "layer_norm_eps": float(get("layer_norm_eps")),
    }


def _check_vocab(directory: Path) -> None:
    path = directory / VOCAB_FILE
    if not path.exists():
        return
    tokens = path.read_text().splitlines()
    ours = get_alphabet().tokens
    for i, (theirs, mine) in enumerate(zip(tokens, ours, strict=False)):
        if theirs != mine:
            raise ESMConversionError(
                f"{path}:{i + 1}: token {theirs!r}, ESM-2's alphabet has {mine!r} at id {i}"
            )
    if len(tokens) != len(ours):
        raise ESMConversionError(f"{path}: {len(tokens)} tokens, ESM-2's alphabet has {len(ours)}")


def _load_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return read_safetensors(path, ESMConversionError, where=str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ESMConversionError(f"{path}: no such file") from None
    except Exception as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise ESMConversionError(
            f"{path}: cannot be read ({type(err).__name__}: {detail})"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ESMConversionError(f"{path}: not a state dict of tensors")
    return state


def _weight_paths(directory: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        path = directory / name
        if path.exists():
            break
    else:
        raise ESMConversionError(
            f"{directory}: no model.safetensors or pytorch_model.bin (transformers' "
            "save_pretrained layout)"
        )
    if not name.endswith(".index.json"):
        return [path]
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ESMConversionError(f"{path}: not a weight index ({type(err).__name__})") from None
    return [directory / shard for shard in shards]


def read_hf_esm(directory) -> tuple[dict, dict, dict | None]:
    """(state dict in fair-esm's names, hyper-parameters, contact regression or None) of an
    ``EsmForMaskedLM`` directory."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise ESMConversionError(
            f"{directory}: no {CONFIG_FILE}, not a transformers model directory"
        )
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise ESMConversionError(f"{config_path}: not JSON ({err})") from None
    if not isinstance(config, dict):
        raise ESMConversionError(f"{config_path}: not a JSON object")
    hparams = hf_hyperparameters(config, str(config_path))
    _check_vocab(directory)

    state = {}
    for path in _weight_paths(directory):
        state.update(_load_weights(path))
    if not any(k.startswith("lm_head.") for k in state):
        raise ESMConversionError(
            f"{directory}: no lm_head weights, not an EsmForMaskedLM (an EsmModel has no LM head)"
        )
    # Older transformers saved the position ids, and a learned position table it ignores when
    # loading a rotary model (_keys_to_ignore_on_load_unexpected); neither is used.
    for key in ("esm.embeddings.position_ids", "esm.embeddings.position_embeddings.weight"):
        state.pop(key, None)
    for key in [k for k in state if SHARED_INV_FREQ.fullmatch(k)]:
        shared = state.pop(key)
        for i in range(hparams["encoder_layers"]):
            state[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = shared
    state = {fair_esm_name(k): v for k, v in state.items()}
    contact = {k.rsplit(".", 1)[1]: state.pop(k) for k in CONTACT_KEYS if k in state}
    return state, hparams, contact or None


def convert_hf_esm(
    directory, out_path, attention: str = "softmax", nb_features: int = 256, seed: int = 0
) -> Path:
    """Read an HF ``EsmForMaskedLM`` directory and write a proteinperf checkpoint."""
    directory = Path(directory)
    state, hparams, contact = read_hf_esm(directory)
    where = f"transformers ESM directory {directory}"
    model = performer_from_esm_state(state, hparams, attention, nb_features, seed, where)
    return save_converted(out_path, model, "transformers-esm", directory.name, seed, contact)


__all__ = [
    "convert_hf_esm",
    "fair_esm_name",
    "hf_hyperparameters",
    "is_hf_directory",
    "read_hf_esm",
]
