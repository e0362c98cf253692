"""One section of the GPU check in its own process: ``python -m ... SECTION SETTINGS DEADLINE OUT``.

The section's ``run(settings, deadline, record)`` calls ``record(partial)`` as it goes; each
call rewrites OUT atomically, so a section killed at its time box still leaves what it had
measured. A fresh process per section also keeps a CUDA error (which poisons the context) from
spilling into the next section.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path

from proteinperf.benchmarks._measure import _json_safe

from .settings import Settings

MODULES = {"env": "env", "tests": "correctness", "bench": "speed", "train": "throughput"}


def write_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=1, allow_nan=False))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    section, settings_path, deadline, out = argv
    out_path = Path(out)
    latest: dict = {}

    def record(partial: dict) -> None:
        latest.clear()
        latest.update(partial)
        write_atomic(out_path, {"status": "running", "result": partial})

    try:
        settings = Settings.from_dict(json.loads(Path(settings_path).read_text()))
        module = importlib.import_module(f"{__package__}.{MODULES[section]}")
        result = module.run(settings, float(deadline), record)
    except Exception as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}".strip()
        write_atomic(
            out_path,
            {
                "status": "error",
                "error": error[:1000],
                "traceback": traceback.format_exc()[-4000:],
                "result": dict(latest),
            },
        )
        return 1
    write_atomic(out_path, {"status": "ok", "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
