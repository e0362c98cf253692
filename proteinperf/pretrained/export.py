"""Export a trained checkpoint as a named pretrained model: fp16 weights and a model card.

Above the checkpoint code (it loads and saves through it); the registry that finds named
models is ``proteinperf.pretrained``, below it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from proteinperf.atomic import atomic_output
from proteinperf.checkpoint import load_model_and_metadata, save_model
from proteinperf.checksum import file_sha256
from proteinperf.errors import InputError

MAX_SHIPPED_MB = 15.0


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
    out = Path(out)
    model, _, meta = load_model_and_metadata(checkpoint)
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
        "parameters": model.num_parameters(),
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


__all__ = ["MAX_SHIPPED_MB", "export_model"]
