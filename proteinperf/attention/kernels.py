"""Old name of ``proteinperf.attention.phi`` (the FAVOR+ feature maps), kept so that existing
imports keep working."""

from proteinperf.attention.phi import *  # noqa: F401,F403
from proteinperf.attention.phi import __all__  # noqa: F401
