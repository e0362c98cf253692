"""`proteinperf --help` and friends stay light: no torch, Lightning, NumPy or Hydra before a
command runs; choices come from proteinperf.constants, which the library shares."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from proteinperf import constants
from proteinperf.cli import COMMAND_MODULES, main

HEAVY = ("torch", "lightning", "pytorch_lightning", "hydra", "omegaconf", "numpy", "pandas",
         "pyarrow", "numba", "scipy")  # fmt: skip

# One interpreter runs every help screen (each ends in SystemExit) and reports what got imported.
_PROBE = """
import json, sys
from proteinperf.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_help_and_version_import_nothing_heavy():
    commands = [m.replace("_", "-") for m in COMMAND_MODULES]
    argvs = [["--version"], ["--help"], *([c, "--help"] for c in commands)]
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argvs)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    imported = set(json.loads(out.stdout.splitlines()[-1]))
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    for command in commands:
        assert f"usage: proteinperf {command}" in out.stdout


def test_train_hands_every_argument_to_hydra(monkeypatch):
    seen = []

    class Child:
        def __init__(self, argv):
            seen.append(argv)

        def wait(self):
            return 3

    monkeypatch.setattr("subprocess.Popen", Child)
    assert main(["train", "-m", "model=tiny,performer_bid", "--cfg", "job"]) == 3  # its status
    assert seen == [[sys.executable, "-m", "proteinperf.train", "-m",
                     "model=tiny,performer_bid", "--cfg", "job"]]  # fmt: skip


def test_train_help_is_ours(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "Hydra" in capsys.readouterr().out


@pytest.mark.parametrize("command", [m.replace("_", "-") for m in COMMAND_MODULES[1:]])
def test_help_text_shows_single_percent_signs(command, capsys):
    # argparse %-formats help strings, not descriptions: "%%" in a description prints as is.
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "%%" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, module, attribute",
    [
        ("KERNELS", "proteinperf.attention", "KERNELS"),
        ("ATTENTIONS", "proteinperf.model", "ATTENTIONS"),
        ("FEATURE_SCALINGS", "proteinperf.model", "FEATURE_SCALINGS"),
        ("OBJECTIVES", "proteinperf.data.datamodule", "OBJECTIVES"),
        ("DEVICES", "proteinperf.inference.common", "DEVICES"),
        ("PRECISIONS", "proteinperf.inference.common", "PRECISIONS"),
        ("DEFAULT_TOKS_PER_BATCH", "proteinperf.inference.common", "DEFAULT_TOKS_PER_BATCH"),
        ("DUPLICATE_POLICIES", "proteinperf.inference.fasta_index", "DUPLICATE_POLICIES"),
        ("EMBED_INCLUDES", "proteinperf.inference.embed", "INCLUDES"),
        ("EMBED_FORMATS", "proteinperf.inference.writers", "FORMATS"),
        ("CONTACT_FORMATS", "proteinperf.inference.contacts", "FORMATS"),
        ("SCORE_STRATEGIES", "proteinperf.inference.score", "STRATEGIES"),
        ("MUTATION_STRATEGIES", "proteinperf.inference.mutations", "STRATEGIES"),
        ("INVALID_POLICIES", "proteinperf.data.fasta", "INVALID_POLICIES"),
        ("SPLITS", "proteinperf.data.blocks", "SPLITS"),
    ],
)
def test_library_uses_the_same_choices(name, module, attribute):
    import importlib

    assert getattr(importlib.import_module(module), attribute) == getattr(constants, name)


def test_a_missing_command_module_fails_loudly(monkeypatch):
    import proteinperf.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()
