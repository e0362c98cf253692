"""Hydra structured configs: the schemas conf/model/ and conf/optim/ build on.

The defaults live in the dataclasses (``ModelConfig``, ``OptimConfig``); the YAML files only
say what differs. Because the nodes are typed, a misspelt or mistyped override fails at
composition and names the key (``model.d_modle=3``: "Key 'd_modle' not in 'TrainModelConfig'").
"""

from __future__ import annotations

from dataclasses import dataclass

from proteinperf.model import ModelConfig
from proteinperf.optim import OptimConfig


@dataclass
class TrainModelConfig(ModelConfig):
    """A conf/model/ node: the architecture plus how a run starts from it."""

    objective: str = "mlm"  # mlm (bidirectional) | clm (needs causal: true)
    init_from: str | None = None  # a proteinperf checkpoint: architecture + weights from it


def register_configs() -> None:
    """Store the schemas as ``model/schema`` and ``optim/schema`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="model", name="schema", node=TrainModelConfig)
    store.store(group="optim", name="schema", node=OptimConfig)
