"""``make bench``: run the benchmarks, print their tables, write JSON (+ PNG) results."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

from proteinperf.benchmarks import BENCHMARKS
from proteinperf.benchmarks._measure import write_json

DEFAULT_OUT = Path("benchmarks") / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m proteinperf.benchmarks", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {BENCHMARKS}")
    return args


def load(name: str) -> ModuleType | None:
    """The benchmark module, or None (with a skip line) when it does not exist yet."""
    module_name = f"{__package__}.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"skip {name}: {module_name} does not exist yet", flush=True)
        return None


def run_benchmark(name: str, module: ModuleType, quick: bool, out_dir: Path) -> dict:
    """Run one benchmark, write ``<name>.json`` and ``<name>.md``, print its tables."""
    print(f"== {name}{' (quick)' if quick else ''}", flush=True)
    start = time.monotonic()
    result = module.run(quick=quick, out_dir=out_dir)
    write_json(out_dir / f"{name}.json", result)
    markdown = result.get("markdown")
    if markdown:
        (out_dir / f"{name}.md").write_text(markdown + "\n")
        print("\n" + markdown + "\n")
    print(f"== {name}: {time.monotonic() - start:.0f} s, results in {out_dir}/{name}.json")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only:
        try:
            module = load(name)
            if module is not None:
                run_benchmark(name, module, args.quick, args.out)
        except Exception:  # one broken benchmark must not hide the others' results
            traceback.print_exc()
            print(f"FAILED {name}", flush=True)
            failed.append(name)
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
