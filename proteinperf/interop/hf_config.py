"""transformers' configuration of an exported proteinperf model: ModelConfig's fields as is.

Carried into the exported folder as ``configuration_proteinperf.py`` (interop.hf_export).
"""

from __future__ import annotations

import dataclasses

from transformers import PretrainedConfig

from proteinperf.model import ModelConfig


class ProteinperfConfig(PretrainedConfig):
    model_type = "proteinperf"
    # transformers' usual names for the fields its utilities read
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "intermediate_size": "d_ff",
        "max_position_embeddings": "max_len",
    }

    def __init__(self, **kwargs):
        for name, default in dataclasses.asdict(ModelConfig()).items():
            setattr(self, name, kwargs.pop(name, default))
        kwargs.setdefault("pad_token_id", self.padding_idx)
        kwargs.setdefault("bos_token_id", self.cls_idx)
        kwargs.setdefault("eos_token_id", self.eos_idx)
        kwargs.setdefault("is_decoder", self.causal)
        # The LM head reads the embedding matrix itself; nothing for transformers to tie.
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        """The proteinperf ModelConfig these fields describe (validated)."""
        return ModelConfig.from_dict(
            {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}
        )
