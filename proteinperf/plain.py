"""Plain Python values for JSON files and checkpoint metadata: the one converter.

NumPy scalars and arrays become Python numbers and lists (a checkpoint must load with
``torch.load(weights_only=True)``, which refuses pickled NumPy objects; JSON needs them too),
tuples become lists, paths strings, dict keys strings. ``finite=True`` also turns NaN and
infinities into None, so that ``json.dumps(..., allow_nan=False)`` writes strict JSON.
"""

from __future__ import annotations

import math
from pathlib import PurePath

import numpy as np


def plain(value, finite: bool = False):
    if isinstance(value, dict):
        return {str(k): plain(v, finite) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, finite) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), finite)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, PurePath):
        return str(value)
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["plain"]
