"""A proteinperf model as a Hugging Face folder that ``transformers`` loads with
``trust_remote_code=True``, where proteinperf is not installed.

The folder: ``config.json`` (ModelConfig's fields, ``auto_map``, and proteinperf's metadata
under ``"proteinperf"``), ``model.safetensors`` (float32), ``tokenizer_config.json``, a
``README.md`` model card, and the code: the transformers classes (interop.hf_config,
hf_modeling, hf_tokenizer) and every package module they import, carried as they are
(interop.carry). ``proteinperf.checkpoint.read_hf_directory`` reads the folder back, so every
command accepts it as a CHECKPOINT.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from proteinperf import __version__, pretrained
from proteinperf.atomic import atomic_output
from proteinperf.checkpoint import (
    ALPHABET,
    HF_CONFIG,
    HF_CONTACTS,
    HF_META_KEY,
    HF_PREFIX,
    HF_WEIGHTS,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    load_model_and_metadata,
)
from proteinperf.errors import require_extra
from proteinperf.interop.carry import carry
from proteinperf.plain import plain

# The modules transformers loads, under the file names it expects; carry adds what they import.
ENTRY_MODULES = {
    "proteinperf.interop.hf_config": "configuration_proteinperf",
    "proteinperf.interop.hf_modeling": "modeling_proteinperf",
    "proteinperf.interop.hf_tokenizer": "tokenization_proteinperf",
}
CONFIG_CLASS = "configuration_proteinperf.ProteinperfConfig"
TOKENIZER_CLASS = "ProteinperfTokenizer"
TOKENIZER_MODULE_CLASS = f"tokenization_proteinperf.{TOKENIZER_CLASS}"
BASE_CLASS = "modeling_proteinperf.ProteinperfModel"  # AutoModel: the representations
HEAD_CLASSES = {  # objective -> (auto class, class)
    "mlm": ("AutoModelForMaskedLM", "ProteinperfForMaskedLM"),
    "clm": ("AutoModelForCausalLM", "ProteinperfForCausalLM"),
}
# What a registered model's card says about its .pt file, not about the exported folder.
CARD_FILE_FIELDS = ("path", "sha256", "size_mb")


def export_hf(checkpoint, out) -> Path:
    """Write ``checkpoint`` (a model file, Lightning .ckpt, exported folder or model name) as
    a transformers folder ``out``, atomically (an existing ``out`` is replaced)."""
    save_file = require_extra("safetensors.torch", "hf", "export-hf").save_file
    out = Path(out)
    model, _, meta = load_model_and_metadata(checkpoint)
    config = model.config
    objective = "clm" if config.causal else "mlm"
    contacts = meta.get("contact_regression")
    extras = {
        k: v
        for k, v in meta.items()
        if k not in ("model_config", "format_version", "contact_regression", "version")
    }
    card = _card(checkpoint, extras.get("card"), model)
    extras["card"] = card
    extras.setdefault("objective", objective)
    auto_head, head = HEAD_CLASSES[objective]
    with atomic_output(out, directory=True) as tmp:
        carry(ENTRY_MODULES, tmp, names=ENTRY_MODULES)
        hf_config = {
            "model_type": "proteinperf",
            "architectures": [head],
            "auto_map": {
                "AutoConfig": CONFIG_CLASS,
                "AutoModel": BASE_CLASS,
                auto_head: f"modeling_proteinperf.{head}",
            },
            **dataclasses.asdict(config),
            "pad_token_id": config.padding_idx,
            "bos_token_id": config.cls_idx,
            "eos_token_id": config.eos_idx,
            "is_decoder": config.causal,
            "tie_word_embeddings": False,
            "dtype": "float32",
            HF_META_KEY: plain(
                {
                    "format": MODEL_FORMAT,
                    "format_version": MODEL_FORMAT_VERSION,
                    "alphabet": ALPHABET,
                    "version": __version__,
                    **extras,
                }
            ),
        }
        _write_json(tmp / HF_CONFIG, hf_config)
        state = model.state_dict()
        state = {HF_PREFIX + k: v.detach().float().contiguous() for k, v in state.items()}
        save_file(state, tmp / HF_WEIGHTS, metadata={"format": "pt"})
        if contacts is not None:
            save_file(
                {k: v.float().contiguous() for k, v in contacts.items()},
                tmp / HF_CONTACTS,
                metadata={"format": "pt"},
            )
        _write_json(
            tmp / "tokenizer_config.json",
            {
                "tokenizer_class": TOKENIZER_CLASS,
                "auto_map": {"AutoTokenizer": [TOKENIZER_MODULE_CLASS, None]},
                "add_eos": not config.causal,  # a causal model continues its prompt
                "padding_side": "left" if config.causal else "right",
                **({"model_max_length": config.max_len} if config.positional == "learned" else {}),
            },
        )
        (tmp / "README.md").write_text(model_card(card, objective, config))
    return out


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _card(checkpoint, stored: dict | None, model) -> dict:
    """The model's card: a registered model's ``.json`` card over the one inside the file (an
    exported folder keeps its card, name included); the file's name and the config's facts
    where it says nothing."""
    name = str(checkpoint)
    card = dict(stored or {})
    if name in pretrained.registry():
        card = {**card, **pretrained.model_card(name)}
    card = {k: v for k, v in card.items() if k not in CARD_FILE_FIELDS and v is not None}
    card.setdefault("name", pretrained.resolve(checkpoint).stem)
    card.setdefault("attention", model.config.attention)
    card.setdefault("parameters", model.num_parameters())
    return card


def _value(value) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k} {_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(card: dict, objective: str, config) -> str:
    """README.md of the folder: Hub metadata, what the model is, how to load it, its card."""
    auto = HEAD_CLASSES[objective][0]
    pipeline = "text-generation" if objective == "clm" else "fill-mask"
    kind = "next-token (causal)" if objective == "clm" else "masked"
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline}",
        "tags: [protein, protein-language-model, performer, proteinperf]",
        "---",
        "",
        f"# {card['name']}",
        "",
        card.get("description")
        or f"A proteinperf protein language model: {config.attention} attention, {kind} LM.",
        "",
        f"{kind.capitalize()} protein language model, {config.attention} attention, "
        f"d={config.d_model}, {config.n_layers} layers x {config.n_heads} heads, "
        f"{config.positional} positions, {card['parameters']:,} parameters. Token ids are "
        "ESM-2's alphabet. Exported by proteinperf's `export-hf` with the package's own model "
        "code beside the weights (`trust_remote_code=True`; proteinperf need not be installed).",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)",
        f"model = {auto}.from_pretrained(path, trust_remote_code=True)",
        "```",
        "",
    ]
    if objective == "clm":
        lines += [
            "`generate()` carries proteinperf's decoding state (the fixed-size FAVOR+ prefix "
            "sums, or the KV cache of exact attention) from token to token; greedy search and "
            "sampling use it, beam search needs `use_cache=False`. Prompts are framed `<cls>` + "
            "residues and padded on the left.",
            "",
        ]
    details = [(k, v) for k, v in card.items() if k not in ("name", "description", "attention")]
    if details:
        lines += ["## Card", ""]
        lines += [f"- **{k}**: {_value(v)}" for k, v in details]
        lines.append("")
    return "\n".join(lines)


__all__ = ["ENTRY_MODULES", "export_hf", "model_card"]
