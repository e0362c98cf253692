"""transformers' model classes of an exported proteinperf model: PerformerLM inside.

Carried into the exported folder as ``modeling_proteinperf.py`` with proteinperf's model and
attention modules (interop.carry), so ``trust_remote_code`` runs the package's own forward.
Every class holds the whole PerformerLM as ``model`` (the same weight names for all of them);
``hidden_states[i]`` is proteinperf's layer i (0 = token embeddings, n = the last block after
the final LayerNorm), ``attention_mask`` its padding mask (1 = real token).

Causal generation carries PerformerLM's decoding state (FAVOR+ prefix sums of fixed size, or
the KV cache of exact attention) between steps: ``generate`` feeds one token per step, with
positions counted per row, so left-padded prompts decode as if unpadded. The state is not a
transformers ``Cache``: greedy search and sampling use it; beam search needs use_cache=False.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
from transformers.utils import ModelOutput

from proteinperf.interop.hf_config import ProteinperfConfig
from proteinperf.model import PerformerLM

IGNORE_INDEX = -100  # labels not scored (transformers' convention)


class ProteinperfPreTrainedModel(PreTrainedModel):
    config_class = ProteinperfConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]

    def __init__(self, config: ProteinperfConfig):
        super().__init__(config)
        self.model = PerformerLM(config.model_config())
        self.post_init()

    def _init_weights(self, module):
        pass  # PerformerLM initialises itself; from_pretrained then loads every weight

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return None  # the LM head reads the embedding matrix: nothing to tie

    def _forward(self, input_ids, attention_mask, output_hidden_states):
        """(logits (B, L, V), hidden states of layers 0..n or None, last hidden state)."""
        padding_mask = None if attention_mask is None else attention_mask.bool()
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        n = self.config.n_layers
        first = 0 if output_hidden_states else n
        out = self.model(input_ids, padding_mask, repr_layers=range(first, n + 1))
        reps = out["representations"]
        hidden = tuple(reps[i] for i in range(n + 1)) if output_hidden_states else None
        return out["logits"], hidden, reps[n]


class ProteinperfModel(ProteinperfPreTrainedModel):
    """The representations: ``last_hidden_state`` is layer n (after the final LayerNorm)."""

    def forward(self, input_ids, attention_mask=None, output_hidden_states=None, **kwargs):
        _, hidden, last = self._forward(input_ids, attention_mask, output_hidden_states)
        return BaseModelOutput(last_hidden_state=last, hidden_states=hidden)


class ProteinperfForMaskedLM(ProteinperfPreTrainedModel):
    """Masked LM (bidirectional models): loss = cross-entropy at labels != -100."""

    def forward(
        self, input_ids, attention_mask=None, labels=None, output_hidden_states=None, **kwargs
    ):
        logits, hidden, _ = self._forward(input_ids, attention_mask, output_hidden_states)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX
            )
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden)


@dataclass
class ProteinperfCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None
    decoding_state: object = None  # proteinperf.model.DecodingState, with use_cache


class ProteinperfForCausalLM(ProteinperfPreTrainedModel, GenerationMixin):
    """Next-token LM (causal models): loss = cross-entropy of token t+1 from the logits at t
    (labels shifted inside, -100 not scored), as transformers' causal LMs."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the decoding state travels as `decoding_state`, not a transformers Cache

    def forward(
        self,
        input_ids,
        attention_mask=None,
        labels=None,
        output_hidden_states=None,
        decoding_state=None,
        use_cache=None,
        **kwargs,
    ):
        if use_cache and labels is None and not output_hidden_states:
            # the decoding path: the prompt (masked positions take no place), then one token
            # per call, continuing `decoding_state`
            keep = None
            if attention_mask is not None:
                keep = attention_mask[:, -input_ids.shape[1] :].bool()
            logits, state = self.model.step(input_ids, decoding_state, keep)
            return ProteinperfCausalLMOutput(logits=logits, decoding_state=state)
        logits, hidden, _ = self._forward(input_ids, attention_mask, output_hidden_states)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels[:, 1:].flatten(),
                ignore_index=IGNORE_INDEX,
            )
        return ProteinperfCausalLMOutput(loss=loss, logits=logits, hidden_states=hidden)

    def generate(self, *args, **kwargs):
        config = kwargs.get("generation_config") or self.generation_config
        beams = kwargs.get("num_beams", config.num_beams) or 1
        if beams > 1 and kwargs.get("use_cache", config.use_cache) is not False:
            # beam search would reorder a transformers Cache between steps, not this state
            raise ValueError(
                "beam search cannot reorder proteinperf's decoding state: pass use_cache=False "
                "(every step runs the whole sequence) or use greedy search or sampling"
            )
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(
        self, input_ids, attention_mask=None, decoding_state=None, use_cache=None, **kwargs
    ):
        if decoding_state is not None:
            input_ids = input_ids[:, -1:]  # the state holds everything before it
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoding_state": decoding_state,
            "use_cache": use_cache,
        }

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs["decoding_state"] = outputs.get("decoding_state")
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
