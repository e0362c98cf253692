"""interop.carry: package modules as a flat folder of relatively importing files."""

from __future__ import annotations

import ast
import sys
import textwrap

import pytest
import torch
from helpers import tiny_model

from proteinperf.interop.carry import CarryError, carry, dependencies, flat_name, rewrite_imports
from proteinperf.interop.hf_export import ENTRY_MODULES

SOURCE = textwrap.dedent(
    """\
    from __future__ import annotations

    import math
    from collections.abc import Sequence

    import torch

    from proteinperf.attention import (
        draw_features,
        favor_attention as favor,
    )
    from proteinperf.errors import ConfigError  # noqa: F401 (re-exported)
    from .phi import KERNELS
    from ..layers import LayerDict


    def f():
        from proteinperf.data.alphabet import get_alphabet

        return get_alphabet
    """
)


def test_rewrite_makes_our_imports_relative_and_flat_and_keeps_the_rest():
    out = rewrite_imports(SOURCE, "proteinperf.attention.favor", {"proteinperf.errors": "errs"})
    assert out == textwrap.dedent(
        """\
        from __future__ import annotations

        import math
        from collections.abc import Sequence

        import torch

        from .attention import draw_features, favor_attention as favor
        from .errs import ConfigError  # noqa: F401 (re-exported)
        from .attention_phi import KERNELS
        from .layers import LayerDict


        def f():
            from .data_alphabet import get_alphabet

            return get_alphabet
        """
    )


@pytest.mark.parametrize(
    "source, message",
    [
        ("from proteinperf.attention import recurrent\n", "imports the module"),
        ("from . import phi\n", "imports the module"),
        ("import proteinperf.model\n", "cannot be carried"),
    ],
)
def test_imports_a_flat_folder_cannot_hold_are_refused(source, message):
    with pytest.raises(CarryError, match=message):
        rewrite_imports(source, "proteinperf.attention.favor")


def test_flat_names():
    assert flat_name("proteinperf.attention.phi") == "attention_phi"
    assert flat_name("proteinperf.attention") == "attention"
    with pytest.raises(CarryError):
        flat_name("proteinperf")


def test_the_exported_model_code_needs_only_torch_numpy_and_transformers(tmp_path):
    written = carry(ENTRY_MODULES, tmp_path, names=ENTRY_MODULES)
    assert {p.stem for p in written} >= {"model", "attention_favor", "attention_recurrent"}
    outside = set()
    for path in written:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                outside |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                outside.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom):  # relative: a file of the folder
                assert (tmp_path / f"{node.module}.py") in written, (path.name, node.module)
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert outside - stdlib == {"torch", "numpy", "transformers"}


def test_transformers_finds_every_carried_file(tmp_path):
    dynamic = pytest.importorskip("transformers.dynamic_module_utils")
    written = carry(ENTRY_MODULES, tmp_path, names=ENTRY_MODULES)
    found = set()
    for entry in ENTRY_MODULES.values():
        found |= set(dynamic.get_relative_import_files(tmp_path / f"{entry}.py"))
    entries = {str(tmp_path / f"{e}.py") for e in ENTRY_MODULES.values()}
    assert {str(p) for p in written} == found | entries


def test_the_carried_folder_is_the_same_model(tmp_path, monkeypatch):
    """Imported as a package of its own, the folder's PerformerLM computes what ours does."""
    carry(["proteinperf.model"], tmp_path / "flat")
    (tmp_path / "flat" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    from flat.model import ModelConfig, PerformerLM

    ours = tiny_model("favor_softmax", weight_scale=3.0)
    flat = PerformerLM(ModelConfig(**vars(ours.config))).eval()
    assert PerformerLM is not type(ours)
    flat.load_state_dict(ours.state_dict())
    tokens = torch.tensor([[0, 5, 6, 7, 2, 1]])
    assert torch.equal(flat(tokens)["logits"], ours(tokens)["logits"])
    assert dependencies(["proteinperf.model"])[0] == "proteinperf.model"
