"""Old home of the training module, kept so that existing imports keep working.

The LightningModule is ``proteinperf.lightning_module.ProteinLM``, the optimizer and schedule
``proteinperf.optim``; ``train_small_model`` (the notebooks' small model) is
``proteinperf.lightning_module.train_small_model``.
"""

from proteinperf.checkpoint import FORMAT_VERSION  # noqa: F401 (it was defined here)
from proteinperf.lightning_module import (  # noqa: F401
    IGNORE,
    OBJECTIVES,
    RUN_FIELDS,
    ProteinLM,
    initial_model,
    train_small_model,
)
from proteinperf.optim import DEFAULT_OPTIM, OPTIMIZERS, SCHEDULES, LRSchedule  # noqa: F401

build_model = initial_model  # the old name (proteinperf.checkpoint.build_model is another)
