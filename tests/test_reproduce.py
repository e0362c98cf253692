"""`make reproduce` end to end on the sample proteins: five tiny models, a second each."""

import json

import helpers
import pytest

from proteinperf import reproduce

TINY = [
    *(f"model.{k}={v}" for k, v in helpers.TINY.items()),
    "data.max_length=48",
    "data.batch_size=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "optim.warmup_steps=2",
    "+trainer.enable_model_summary=false",
]


@pytest.fixture
def far(tmp_path):
    path = tmp_path / "far.fasta"
    path.write_text(">f1\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEV\n>f2\nMSDNELLKKAVEEGRLTPEQAEAW\n")
    return path


@pytest.mark.slow
def test_reproduce_end_to_end(tmp_path, far):
    out, work, exported = tmp_path / "results", tmp_path / "work", tmp_path / "pretrained"
    argv = [
        "--budget=0.02",  # 1 s per model
        "--corpus=data/sample_proteins.fasta",
        f"--far={far}",
        f"--out={out}",
        f"--work={work}",
        f"--export-dir={exported}",
        "--bootstrap=5",
        "--analysis-seqs=3",
        "--max-length=40",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY,
    ]
    assert reproduce.main(argv) == 0
    report = json.loads((out / "reproduce.json").read_text())
    runs = report["runs"]
    assert [(r["objective"], r["attention"]) for r in runs] == list(reproduce.RUNS.values())
    for run in runs:
        assert run["steps"] >= 1 and run["seconds"] > 0
        for split in ("test", "far"):
            assert 0 <= run[split]["accuracy"] <= 1 and run[split]["perplexity"] > 1
        assert run["curve"] and {"step", "seconds", "accuracy"} <= set(run["curve"][0])
    assert set(report["unigram"]) == {"accuracy", "perplexity"}
    assert report["device"] == "cpu" and {r["device"] for r in runs} == {"cpu"}
    similarity = report["similarity"]
    for condition in ("model", "untrained", "shuffled"):
        assert {"pearson", "ci95", "per_layer"} <= set(similarity[condition])
    assert similarity["analysed_run"] in {r["name"] for r in runs if r["objective"] == "mlm"}
    assert len(similarity["untrained_seeds"]) == 3
    measures = report["amino_acid_similarity"]
    assert measures["analysed_run"] == similarity["analysed_run"]
    for name in ("embedding", "substitution", "attention"):
        assert {"pearson", "spearman", "ci95", "controls", "signal"} <= set(measures[name])
    # One attention study: the block is the BLOSUM62 study's numbers, not a second run.
    assert measures["attention"]["pearson"] == similarity["model"]["pearson"]
    assert measures["attention"]["ci95"] == similarity["model"]["ci95"]
    table = (out / "reproduce.md").read_text()
    assert table.count("| BID |") == 3 and table.count("| UNI |") == 2
    assert "Empirical baseline (unigram" in table
    assert "Trained, evaluated and analysed on cpu." in table
    assert "Amino-acid similarity from substitution: r = " in table
    for png in ("reproduce_curves", "reproduce_similarity_vs_blosum62"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    names = {e["name"] for e in report["exported"]}
    assert names <= {
        f"swissprot-{f}-{k}" for f in ("performer", "transformer") for k in ("bid", "causal")
    }
    assert len(list(exported.glob("*.pt"))) == 2 and len(list(exported.glob("*.json"))) == 2


def test_budget_as_lightning_max_time():
    assert reproduce.max_time(5) == "00:00:05:00"
    assert reproduce.max_time(0.2) == "00:00:00:12"
    assert reproduce.max_time(90.5) == "00:01:30:30"
    assert reproduce.max_time(0.001) == "00:00:00:01"


def test_evaluates_on_the_device_it_trained_on(monkeypatch, tmp_path):
    """Lightning hands the module back on the CPU after training on a GPU; the test split,
    the far set (and the BLOSUM62 study, with the same model) must run on the GPU."""
    from types import SimpleNamespace

    import torch

    import proteinperf.inference.evaluate
    import proteinperf.train

    class Model:  # stands in for the trained PerformerLM: records where it is moved
        device = "cpu"

        def to(self, device):
            self.device = str(device)
            return self

        def eval(self):
            return self

        def parameters(self):
            return iter([torch.zeros(2)])

    trainer = SimpleNamespace(
        callbacks=[reproduce.ElapsedTime()],
        datamodule=SimpleNamespace(corpus_path=tmp_path),
        strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
    )
    module = SimpleNamespace(model=Model(), unigram_log_probs=torch.zeros(3))
    result = {"trainer": trainer, "module": module, "checkpoint": None}
    seen = []

    def evaluate(model, data, **kwargs):
        seen.append(model.device)
        return {"accuracy": 0.5, "perplexity": 2.0, "loss": 0.7, "sequences": 1}

    monkeypatch.setattr(proteinperf.train, "train", lambda cfg: result)
    monkeypatch.setattr(proteinperf.inference.evaluate, "evaluate", evaluate)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    args = reproduce.parse_args([f"--far={tmp_path / 'far.fasta'}", f"--work={tmp_path}"])
    entry, model, _ = reproduce.train_and_evaluate("performer_relu_bid", args, tmp_path)
    assert seen == ["cuda:0", "cuda:0"] and model.device == "cuda:0"
    assert entry["device"] == "cuda:0 (Some GPU)"


def test_curves_keep_masked_and_next_token_accuracy_apart_beside_their_unigram():
    curve = [
        {"step": 10, "seconds": 1.0, "accuracy": 0.1},
        {"step": 20, "seconds": 2.0, "accuracy": 0.12},
    ]
    runs = [
        {"objective": "mlm", "attention": "softmax", "curve": curve},
        {"objective": "clm", "attention": "favor_relu", "curve": curve},
    ]
    unigram = {"mlm": {"accuracy": 0.098}, "clm": {"accuracy": 0.097}}
    fig = reproduce.curves_figure(runs, unigram)
    rows = [ax for ax in fig.axes if ax.get_ylabel()]
    assert len(rows) == 4
    assert {ax.get_ylabel().split()[0] for ax in rows} == {"masked-residue", "next-token"}
    for ax in rows:
        masked = ax.get_ylabel().startswith("masked")
        assert len(ax.lines) == 2  # one run and its unigram line
        assert ax.lines[-1].get_ydata()[0] == (0.098 if masked else 0.097)
