"""`export-hf`: transformers loads the folder without proteinperf and computes what proteinperf
computes; every proteinperf command reads the folder back."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, SEQUENCES, tiny_model, write_fasta

from proteinperf.checkpoint import (
    CheckpointError,
    checkpoint_metadata,
    load_model,
    read_checkpoint,
    save_model,
)
from proteinperf.cli import main
from proteinperf.data.alphabet import get_alphabet
from proteinperf.errors import ConfigError
from proteinperf.interop import hf_export
from proteinperf.interop.hf_export import export_hf

pytest.importorskip("safetensors")

CHILD = Path(__file__).with_name("hf_child.py")
BATCH = ["MKTAYIAKQRQISFVKSHFSRQ", "mad", "GSHMLXDPV<mask>AFQ", "WWYCPN"]
PROMPTS = ["MKTAYIAK", "GS", "WWYCPNMA"]
MAX_NEW_TOKENS = 6
SHIPPED = {
    "shipped-bid": "swissprot-performer-bid",
    "shipped-causal": "swissprot-transformer-causal",
}
TINY_KINDS = [(a, c) for a in ("favor_relu", "favor_softmax", "softmax") for c in (False, True)]
# a converted float16 ESM-2's rotary frequencies (head dim 32, large weights: float32's
# frequencies change these logits by ~1e-2)
FLOAT16_ROTARY = dict(n_heads=1, weight_scale=20.0, rotary_inv_freq_dtype="float16")
NAMES = [
    *SHIPPED,
    *(f"tiny-{a}-{'clm' if c else 'mlm'}" for a, c in TINY_KINDS),
    "tiny-float16-rotary",
]


def _tokens(sequences, causal: bool) -> torch.Tensor:
    """proteinperf's framing of a batch: <cls> residues <eos>, right-padded (masked LM);
    <cls> residues, left-padded (causal: prompts to continue)."""
    alphabet = get_alphabet()
    if not causal:
        return alphabet.get_batch_converter()([("", s) for s in sequences])[2]
    rows = [[alphabet.cls_idx, *alphabet.tokenize(s)] for s in sequences]
    width = max(map(len, rows))
    return torch.tensor([[alphabet.padding_idx] * (width - len(r)) + r for r in rows])


def _labels(tokens: torch.Tensor) -> torch.Tensor:
    labels = tokens.clone()
    labels[tokens == get_alphabet().padding_idx] = -100
    labels[:, ::3] = -100  # some real positions not scored either
    return labels


def _greedy(model, prompt: str) -> list[int]:
    """Greedy continuation by proteinperf's full forward, one token at a time, to <eos>."""
    alphabet = get_alphabet()
    ids = [alphabet.cls_idx, *alphabet.tokenize(prompt)]
    for _ in range(MAX_NEW_TOKENS):
        logits = model(torch.tensor([ids]))["logits"][0, -1]
        ids.append(int(logits.argmax()))
        if ids[-1] == alphabet.eos_idx:
            break
    return ids


def _clean_env(hf_home: Path) -> dict:
    """No PYTHON* variables (python -I ignores them anyway), transformers' module cache in
    ``hf_home``, offline, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


# The tests that run transformers share one child interpreter (about 30 s: marked slow).
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (checkpoint, folder)}, and what transformers computed in a clean interpreter."""
    root = tmp_path_factory.mktemp("hf")
    sources = dict(SHIPPED)
    for attention, causal in TINY_KINDS:
        name = f"tiny-{attention}-{'clm' if causal else 'mlm'}"
        model = tiny_model(attention, causal=causal, seed=len(sources), weight_scale=5.0)
        sources[name] = str(save_model(root / f"{name}.pt", model))
    model = tiny_model("softmax", seed=len(sources), **FLOAT16_ROTARY)
    sources["tiny-float16-rotary"] = str(save_model(root / "tiny-float16-rotary.pt", model))
    folders, spec = {}, {}
    for name, source in sources.items():
        folders[name] = (source, export_hf(source, root / name))
        causal = load_model(source)[0].config.causal
        spec[name] = {
            "path": str(folders[name][1]),
            "causal": causal,
            "sequences": BATCH,
            "labels": _labels(_tokens(BATCH, causal)),
            "prompts": PROMPTS,
            "max_new_tokens": MAX_NEW_TOKENS,
        }
    torch.save({"folders": spec}, root / "spec.pt")
    empty = root / "cwd"
    empty.mkdir()
    child = subprocess.run(
        [sys.executable, "-I", str(CHILD), str(root / "spec.pt"), str(root / "results.pt")],
        cwd=empty,
        env=_clean_env(root / "hf_home"),
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return folders, torch.load(root / "results.pt", weights_only=False)


@pytest.mark.slow
def test_transformers_loads_every_folder_without_proteinperf(exported):
    folders, results = exported
    assert results["proteinperf_importable"] is False
    for name, (source, _) in folders.items():
        causal = load_model(source)[0].config.causal
        head = "ProteinperfForCausalLM" if causal else "ProteinperfForMaskedLM"
        got = results["folders"][name]
        assert got["classes"] == [
            "ProteinperfConfig",
            "ProteinperfTokenizer",
            head,
            "ProteinperfModel",
        ]
        assert got["training"] is False


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_ids_and_padding_are_proteinperfs(exported, name):
    folders, results = exported
    got = results["folders"][name]
    causal = load_model(folders[name][0])[0].config.causal
    tokens = _tokens(BATCH, causal)
    assert torch.equal(got["input_ids"], tokens)
    assert torch.equal(got["attention_mask"].bool(), tokens != get_alphabet().padding_idx)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_logits_hidden_states_and_loss_equal_proteinperfs(exported, name):
    folders, results = exported
    got = results["folders"][name]
    model, _ = load_model(folders[name][0])
    tokens = _tokens(BATCH, model.config.causal)
    real = tokens != get_alphabet().padding_idx
    n = model.config.n_layers
    with torch.no_grad():
        out = model(tokens, real, repr_layers=range(n + 1))
    torch.testing.assert_close(got["logits"], out["logits"], atol=1e-4, rtol=0)
    hidden = torch.stack([out["representations"][i] for i in range(n + 1)], 1)
    torch.testing.assert_close(got["hidden_states"], hidden, atol=1e-4, rtol=0)
    torch.testing.assert_close(got["last_hidden_state"], hidden[:, n], atol=1e-4, rtol=0)

    labels = _labels(tokens)
    log_probs = out["logits"].log_softmax(-1)
    shift = 1 if model.config.causal else 0  # the logits at t score token t + 1
    terms = [
        -log_probs[b, t - shift, labels[b, t]]
        for b in range(labels.shape[0])
        for t in range(shift, labels.shape[1])
        if labels[b, t] != -100
    ]
    torch.testing.assert_close(got["loss"], torch.stack(terms).mean(), atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if "causal" in n or "clm" in n])
def test_generate_continues_as_proteinperfs_greedy_decoding(exported, name):
    """Left-padded prompts decode as alone, one token per step on the carried state."""
    folders, results = exported
    got = results["folders"][name]
    model, _ = load_model(folders[name][0])
    alphabet = get_alphabet()
    width = max(len(alphabet.tokenize(p)) + 1 for p in PROMPTS)
    for row, prompt in zip(got["generated"].tolist(), PROMPTS):
        expected = _greedy(model, prompt)
        row = row[width - (len(alphabet.tokenize(prompt)) + 1) :]  # the left padding
        assert row[: len(expected)] == expected, prompt
        assert set(row[len(expected) :]) <= {alphabet.padding_idx}  # after <eos>
    assert got["step_lengths"][0] == width and set(got["step_lengths"][1:]) == {1}
    uncached = got["generated_uncached"][0].tolist()
    assert uncached[: len(_greedy(model, PROMPTS[0]))] == _greedy(model, PROMPTS[0])
    assert "beam search cannot reorder" in got["beams_with_cache"]
    prompt = _greedy(model, PROMPTS[0])[: len(alphabet.tokenize(PROMPTS[0])) + 1]
    beams = got["beams"][0].tolist()  # without the state: runs, continues the prompt
    assert beams[: len(prompt)] == prompt and len(beams) > len(prompt)


def _without_imports(source: str) -> str:
    class Drop(ast.NodeTransformer):
        def visit_ImportFrom(self, node):
            return None

    return ast.dump(Drop().visit(ast.parse(source)))


@pytest.mark.slow
def test_folder_layout_config_and_card(exported):
    folders, _ = exported
    folder = folders["shipped-bid"][1]
    config = json.loads((folder / "config.json").read_text())
    head = config["auto_map"]["AutoModelForMaskedLM"]
    assert head == "modeling_proteinperf.ProteinperfForMaskedLM"
    assert "AutoModelForCausalLM" not in config["auto_map"]
    assert config["attention"] == "favor_relu" and config["proteinperf"]["objective"] == "mlm"
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    auto = tokenizer["auto_map"]["AutoTokenizer"]
    assert auto == ["tokenization_proteinperf.ProteinperfTokenizer", None]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: fill-mask\n")
    assert "# swissprot-performer-bid" in card and "Performer-ReLU (FAVOR+, m=64)" in card
    assert "sha256" not in card  # the .pt file's, not the folder's
    # the package's own module, the same code apart from its imports
    source = Path(sys.modules["proteinperf.model"].__file__).read_text()
    assert _without_imports(source) == _without_imports((folder / "model.py").read_text())
    causal = json.loads((folders["shipped-causal"][1] / "tokenizer_config.json").read_text())
    assert causal["padding_side"] == "left" and causal["add_eos"] is False


# --- proteinperf reads the folder back ----------------------------------------------------


def test_load_model_reads_the_folder_back_with_its_metadata(tmp_path):
    model = tiny_model("favor_softmax", weight_scale=3.0)
    regression = {"weight": torch.randn(1, 8), "bias": torch.randn(1)}
    extra = {"unigram_log_probs": [-3.0] * 33, "contact_regression": regression}
    checkpoint = save_model(tmp_path / "m.pt", model, extra=extra)
    folder = export_hf(checkpoint, tmp_path / "hf")
    again, _ = load_model(folder)
    for (key, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), key
    meta = checkpoint_metadata(folder)
    assert meta["unigram_log_probs"] == [-3.0] * 33 and meta["objective"] == "mlm"
    contacts = read_checkpoint(folder)["contact_regression"]
    assert torch.equal(contacts["weight"], regression["weight"])
    # a folder exports again: the same config and weights
    export_hf(folder, tmp_path / "hf2")
    configs = [json.loads((p / "config.json").read_text()) for p in (folder, tmp_path / "hf2")]
    assert configs[0] == configs[1]


def test_float16_rotary_frequencies_travel_with_the_folder(tmp_path):
    model = tiny_model("softmax", **FLOAT16_ROTARY)
    folder = export_hf(save_model(tmp_path / "m.pt", model), tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["rotary_inv_freq_dtype"] == "float16"
    again, _ = load_model(folder)
    assert again.config == model.config
    tokens = _tokens(BATCH, causal=False)
    with torch.no_grad():
        assert torch.equal(again(tokens)["logits"], model(tokens)["logits"])


def test_embed_of_the_folder_equals_embed_of_the_checkpoint(tmp_path, capsys):
    fasta = write_fasta(tmp_path / "in.fa", SEQUENCES)
    assert main(["export-hf", "swissprot-performer-bid", str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "hf")
    again = ["export-hf", "swissprot-performer-bid", str(tmp_path / "hf")]
    assert main(again) == 2 and "add --overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0
    outs = []
    for checkpoint in ("swissprot-performer-bid", str(tmp_path / "hf")):
        out = tmp_path / f"{len(outs)}.npz"
        argv = ["embed", checkpoint, fasta, str(out), "--format", "npz", "--quiet"]
        assert main([*argv, "--include", "mean", "per-token", "--layers", "0", "-1"]) == 0
        outs.append(dict(np.load(out)))
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) >= 2 * len(SEQUENCES)
    for key in outs[0]:
        np.testing.assert_array_equal(outs[0][key], outs[1][key], err_msg=key)


def test_a_folder_that_is_not_an_export_is_refused(tmp_path):
    esm = tmp_path / "esm"
    esm.mkdir()
    (esm / "config.json").write_text('{"model_type": "esm"}')
    (esm / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no 'proteinperf' entry.*convert-esm"):
        load_model(esm)
    (esm / "config.json").write_text('{"model_type": ')
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_model(esm)
    (esm / "config.json").unlink()
    with pytest.raises(CheckpointError, match="is a directory without config.json"):
        load_model(esm)


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", "x")

    monkeypatch.setattr(hf_export, "carry", broken)
    with pytest.raises(OSError):
        export_hf("swissprot-performer-bid", tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def _isolated(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` in ``python -I`` from ``cwd``, with proteinperf unimportable (as in hf_child)."""
    prelude = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if not getattr(f, '__module__', '').startswith('__editable__')]\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-c", prelude + code],
        cwd=cwd,
        env=_clean_env(cwd / ".hf_home"),
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_readme_hugging_face_example_runs_as_written(tmp_path):
    section = (ROOT / "README.md").read_text().split("## Hugging Face", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"^    proteinperf (export-hf .*?)\s+#", section, flags=re.M).group(1)
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    name, checkpoint, folder = command.split()
    assert main([name, checkpoint, str(tmp_path / folder)]) == 0  # the snippet runs from there
    code = (
        "import importlib.util\n"
        "assert importlib.util.find_spec('proteinperf') is None\n"
        f"{snippet}"
        "logits = model(**tokenizer(['MKV'], return_tensors='pt')).logits\n"
        "print(type(model).__name__, list(logits.shape))\n"
    )
    run = _isolated(code, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "ProteinperfForMaskedLM [1, 5, 33]"


@pytest.mark.parametrize(
    "name, argv",
    [
        ("swissprot-transformer-causal", "generate {ckpt} {out} --num-samples 3 --seed 1 --quiet"),
        ("swissprot-performer-bid", "score {ckpt} {fasta} {out} --quiet"),
        ("swissprot-performer-bid", "evaluate {ckpt} {fasta} --out {out} --quiet"),
    ],
    ids=["generate", "score", "evaluate"],
)
def test_commands_give_the_same_output_from_the_folder(tmp_path, name, argv):
    fasta = write_fasta(tmp_path / "in.fa", SEQUENCES)
    folder = export_hf(name, tmp_path / "hf")
    outputs = []
    for ckpt in (name, folder):
        out = tmp_path / f"out{len(outputs)}"
        assert main(argv.format(ckpt=ckpt, fasta=fasta, out=out).split()) == 0
        outputs.append(out.read_text().replace(str(folder), name))
    assert outputs[0].count("\n") >= 3 and outputs[0] == outputs[1]


def test_without_safetensors_both_directions_say_which_extra(tmp_path, monkeypatch):
    folder = export_hf("swissprot-performer-bid", tmp_path / "hf")
    for name in ("safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(CheckpointError, match=r"pip install 'proteinperf\[hf\]'"):
        load_model(folder)
    with pytest.raises(ConfigError, match=r"pip install 'proteinperf\[hf\]'"):
        export_hf("swissprot-performer-bid", tmp_path / "again")
    assert not (tmp_path / "again").exists()
