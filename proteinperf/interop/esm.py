"""ESM-2 (fair-esm) checkpoints as proteinperf models: exact with softmax, Performer with FAVOR+.

ESM-2 already has proteinperf's layout (pre-LayerNorm blocks, rotary q/k, final LayerNorm,
tied RoBERTa LM head, token dropout), so conversion renames nothing: it strips fairseq's
prefixes, checks every tensor, and drops what the model recomputes: the tied decoder weight
and the rotary inv_freq, of which it keeps only whether it was rounded to float16. The
contact regression is not part of the LM; it is kept beside the weights.

A model name (``esm2_t6_8M_UR50D``) instead of a file goes through fair-esm's own pretrained
loader: its download into the torch-hub cache (``torch.hub.get_dir()/checkpoints``), the
contact regression included.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from proteinperf.checkpoint import save_model
from proteinperf.errors import ProteinperfError
from proteinperf.model import ROTARY_INV_FREQ_DTYPES, ModelConfig, PerformerLM, rotary_inv_freq

ESM_PREFIXES = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
CONTACT_KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")
VOCAB_SIZE = 33  # ESM-1b alphabet, also ESM-2's


class ESMConversionError(ProteinperfError, ValueError):
    """An ESM checkpoint that cannot be converted (one line, names the file)."""


def _torch_load(path: Path) -> dict:
    # Released fair-esm files store their hyper-parameters as argparse.Namespace, which only
    # sets attributes on unpickling; everything else stays forbidden (weights_only).
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ESMConversionError(f"ESM checkpoint {path}: no such file") from None
    except Exception as err:
        detail = next(
            (line.strip() for line in str(err).splitlines() if "GLOBAL" in line),
            f"{type(err).__name__}",
        )
        raise ESMConversionError(
            f"ESM checkpoint {path}: cannot be read safely ({detail.split(' was not')[0]})"
        ) from err
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise ESMConversionError(f"ESM checkpoint {path}: not a fair-esm file (no 'model' dict)")
    return obj


def _hyperparameters(obj: dict) -> dict:
    """encoder_* settings from "cfg"["model"] (ESM-2) or "args" (older files), as a dict."""
    for source in (
        obj.get("cfg", {}).get("model") if isinstance(obj.get("cfg"), dict) else None,
        obj.get("args"),
    ):
        if isinstance(source, argparse.Namespace):
            return vars(source)
        if isinstance(source, dict):
            return source
    return {}


def contact_regression_path(esm_path) -> Path:
    """fair-esm's convention: esm2_t6_8M_UR50D.pt -> esm2_t6_8M_UR50D-contact-regression.pt."""
    esm_path = Path(esm_path)
    return esm_path.with_name(esm_path.stem + "-contact-regression.pt")


def read_esm_checkpoint(esm_path) -> tuple[dict, dict, dict | None]:
    """(state_dict without fairseq prefixes, hyper-parameters, contact regression or None)."""
    esm_path = Path(esm_path)
    obj = _torch_load(esm_path)
    state = {ESM_PREFIXES.sub("", k): v for k, v in obj["model"].items()}
    contact = {k: state.pop(k) for k in CONTACT_KEYS if k in state}
    regression = contact_regression_path(esm_path)
    if regression.exists():
        extra = _torch_load(regression)["model"]
        contact = {k: v for k, v in extra.items() if k in CONTACT_KEYS}
    contact = {k.rsplit(".", 1)[1]: v for k, v in contact.items()} or None
    return state, _hyperparameters(obj), contact


def esm_config(state: dict, hparams: dict, where: str = "ESM checkpoint") -> ModelConfig:
    """The proteinperf config of an ESM-2 state dict (exact softmax attention, no dropout)."""
    if "embed_tokens.weight" not in state:
        raise ESMConversionError(f"{where}: no embed_tokens.weight, not an ESM-2 model")
    if any(k.startswith(("embed_positions.", "emb_layer_norm_before.")) for k in state):
        raise ESMConversionError(
            f"{where}: learned positions / emb_layer_norm_before: an ESM-1/ESM-1b model, "
            "only ESM-2 is supported"
        )
    vocab, d_model = state["embed_tokens.weight"].shape
    if vocab != VOCAB_SIZE:
        raise ESMConversionError(f"{where}: vocabulary of {vocab} tokens, expected {VOCAB_SIZE}")
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    n_layers = hparams.get("encoder_layers", len(layer_ids))
    if layer_ids != set(range(n_layers)):
        raise ESMConversionError(
            f"{where}: layers {sorted(layer_ids)} but encoder_layers = {n_layers}"
        )
    n_heads = hparams.get("encoder_attention_heads")
    if n_heads is None:
        raise ESMConversionError(f"{where}: encoder_attention_heads missing from cfg/args")
    embed_dim = hparams.get("encoder_embed_dim", d_model)
    if embed_dim != d_model:
        raise ESMConversionError(
            f"{where}: encoder_embed_dim {embed_dim} but embeddings have {d_model}"
        )
    tied = "lm_head.weight" not in state or torch.equal(
        state["lm_head.weight"], state["embed_tokens.weight"]
    )
    config = ModelConfig(
        vocab_size=vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_ff=state["layers.0.fc1.weight"].shape[0] if n_layers else 4 * d_model,
        dropout=0.0,  # ESM-2 was trained without dropout
        positional="rotary",
        attention="softmax",
        causal=False,
        tie_embeddings=tied,
        lm_head="esm",
        final_layer_norm=True,
        qkv_bias=True,
        token_dropout=bool(hparams.get("token_dropout", True)),
        layer_norm_eps=float(hparams.get("layer_norm_eps", 1e-5)),  # fairseq's: 1e-5
    )
    config.validate()
    return config


def check_rotary_inv_freq(inv_freq: torch.Tensor, head_dim: int, where: str) -> str:
    """Which frequencies a stored rotary inv_freq holds, as the model's
    ``rotary_inv_freq_dtype``: 1/10000^(2i/d) in float32, or rounded to float16 (the buffer of
    a model saved in float16, which fair-esm and transformers load as is and run with).
    Anything else is refused."""
    if inv_freq.shape == (head_dim // 2,):
        for dtype in ROTARY_INV_FREQ_DTYPES:  # float32 first: where both match, they agree
            if torch.allclose(inv_freq.float(), rotary_inv_freq(head_dim, dtype=dtype)):
                return dtype
    raise ESMConversionError(
        f"{where} rotary inv_freq differs from 1/10000^(2i/d) in "
        f"{' and in '.join(ROTARY_INV_FREQ_DTYPES)}"
    )


def performer_from_esm_state(
    state: dict,
    hparams: dict,
    attention: str = "softmax",
    nb_features: int = 256,
    seed: int = 0,
    where: str = "ESM checkpoint",
) -> PerformerLM:
    """A PerformerLM holding ESM-2 weights; FAVOR features are drawn from ``seed``."""
    config = esm_config(state, hparams, where)
    config.attention, config.nb_features = attention, nb_features
    state = dict(state)
    dtypes = {}
    for i in range(config.n_layers):
        inv_freq = state.pop(f"layers.{i}.self_attn.rot_emb.inv_freq", None)
        if inv_freq is not None:
            dtypes[i] = check_rotary_inv_freq(inv_freq, config.head_dim, f"{where}: layer {i}")
    if len(set(dtypes.values())) > 1:
        found = ", ".join(f"layer {i}: {dtype}" for i, dtype in dtypes.items())
        raise ESMConversionError(f"{where}: layers' rotary inv_freq disagree ({found})")
    config.rotary_inv_freq_dtype = next(iter(dtypes.values()), "float32")
    try:
        model = PerformerLM(config)
    except ValueError as err:
        raise ESMConversionError(f"{where}: {err}") from err
    model.redraw_features(seed, 0)

    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    features = {k: v for k, v in model.state_dict().items() if k.endswith(".features")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - set(features))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ESMConversionError(
            f"{where}: unexpected ESM-2 layout (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ESMConversionError(
                f"{where}: {key} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict({**state, **features})
    return model.float().eval()


def performer_from_esm_model(esm_model, attention="softmax", nb_features=256, seed=0):
    """Convert an in-memory fair-esm ``ESM2`` module (tests, benchmarks)."""
    state = {
        k: v.detach().clone() for k, v in esm_model.state_dict().items() if k not in CONTACT_KEYS
    }
    hparams = {
        "encoder_layers": esm_model.num_layers,
        "encoder_embed_dim": esm_model.embed_dim,
        "encoder_attention_heads": esm_model.attention_heads,
        "token_dropout": esm_model.token_dropout,
    }
    return performer_from_esm_state(state, hparams, attention, nb_features, seed, "ESM2 module")


def convert_esm_checkpoint(
    esm_path, out_path, attention: str = "softmax", nb_features: int = 256, seed: int = 0
) -> Path:
    """Read a fair-esm ESM-2 ``.pt`` file and write a proteinperf checkpoint to ``out_path``."""
    esm_path = Path(esm_path)
    where = f"ESM checkpoint {esm_path}"
    state, hparams, contact = read_esm_checkpoint(esm_path)
    model = performer_from_esm_state(state, hparams, attention, nb_features, seed, where)
    return save_converted(out_path, model, "fair-esm", esm_path.stem, seed, contact)


def save_converted(out_path, model, kind: str, name: str, seed: int, contact: dict | None) -> Path:
    """Write a converted model with where it came from and its contact regression, if any."""
    extra = {"source": {"kind": kind, "name": name, "feature_seed": seed}}
    if contact is not None:
        extra["contact_regression"] = contact
    return save_model(out_path, model, extra=extra)


def esm2_model_names() -> list[str]:
    """The ESM-2 models fair-esm's pretrained loader knows (esm2_t6_8M_UR50D, ...)."""
    import esm.pretrained

    return sorted(n for n in dir(esm.pretrained) if re.fullmatch(r"esm2_t\d+_\w+", n))


def load_pretrained_esm2(name: str):
    """A fair-esm ``ESM2`` module (contact head loaded) through ``esm.pretrained``: downloaded
    on first use, then read from the torch-hub cache."""
    import esm.pretrained

    names = esm2_model_names()
    if name not in names:
        raise ESMConversionError(
            f"{name!r} is neither a .pt file nor an ESM-2 model fair-esm knows ({', '.join(names)})"
        )
    try:
        esm_model, _ = esm.pretrained.load_model_and_alphabet_hub(name)
    except Exception as err:  # offline, interrupted download, corrupt cache file
        detail = (str(err).strip().splitlines() or [""])[0]
        raise ESMConversionError(
            f"ESM-2 model {name}: fair-esm could not load it from its cache "
            f"({torch.hub.get_dir()}/checkpoints) or download it "
            f"({type(err).__name__}: {detail})"
        ) from err
    return esm_model.eval()


def contact_regression_of(esm_model) -> dict:
    """{"weight": (1, layers·heads), "bias": (1,)}: fair-esm's logistic regression on contacts."""
    regression = esm_model.contact_head.regression
    return {"weight": regression.weight.detach().clone(), "bias": regression.bias.detach().clone()}


def convert_esm_pretrained(
    name: str, out_path, attention: str = "softmax", nb_features: int = 256, seed: int = 0
) -> Path:
    """Load ESM-2 ``name`` with fair-esm's pretrained loader and write a proteinperf checkpoint
    (contact regression kept)."""
    esm_model = load_pretrained_esm2(name)
    model = performer_from_esm_model(esm_model, attention, nb_features, seed)
    return save_converted(out_path, model, "fair-esm", name, seed, contact_regression_of(esm_model))


__all__ = [
    "ESMConversionError",
    "check_rotary_inv_freq",
    "contact_regression_of",
    "contact_regression_path",
    "convert_esm_checkpoint",
    "convert_esm_pretrained",
    "esm2_model_names",
    "esm_config",
    "load_pretrained_esm2",
    "performer_from_esm_model",
    "performer_from_esm_state",
    "read_esm_checkpoint",
    "save_converted",
]
