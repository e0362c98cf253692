import json
import math
from pathlib import Path

import numpy as np

from proteinperf.plain import plain


def test_plain_values_for_json_and_checkpoints():
    value = {1: (np.float32(0.5), np.arange(2)), "p": Path("a/b"), "x": [math.nan, np.inf]}
    assert plain(value) == {"1": [0.5, [0, 1]], "p": "a/b", "x": [value["x"][0], math.inf]}
    strict = plain(value, finite=True)
    assert strict["x"] == [None, None]
    assert type(strict["1"][1][0]) is int
    json.dumps(strict, allow_nan=False)
