"""`make reproduce`: the paper's Table 2 and amino-acid similarity figure, in miniature.

    python -m proteinperf.reproduce --budget 5 [--corpus DIR|FASTA] [--far FASTA] [--preset gpu]
        [hydra.overrides ...]

Trains the paper's five models (bidirectional Transformer, Performer-ReLU, Performer-softmax;
causal Transformer, Performer-ReLU), identical in size, data order and optimiser, each for the
same wall-clock budget (trainer.max_time), then evaluates each on the corpus's test split and on
a far set, runs the BLOSUM62 study on held-out proteins with the best bidirectional model and
writes reproduce.json, reproduce.md (laid out like Table 2), learning curves and the similarity
figure to --out (default benchmarks/results). Each run's logs and checkpoints stay in --work.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

from proteinperf import resources
from proteinperf.atomic import write_text_atomic

ROOT = resources.project_root()  # outputs/ and benchmarks/results/ go here
CONF = resources.conf_dir()  # the checkout's conf/, or the installed package's copy
DEFAULT_FAR = resources.data_dir() / "far_proteins.fasta.gz"
# name -> (objective, attention), the paper's Table 2 rows in order.
RUNS = {
    "transformer_bid": ("mlm", "softmax"),
    "performer_relu_bid": ("mlm", "favor_relu"),
    "performer_softmax_bid": ("mlm", "favor_softmax"),
    "transformer_causal": ("clm", "softmax"),
    "performer_relu_causal": ("clm", "favor_relu"),
}
LABELS = {"softmax": "Transformer", "favor_relu": "Performer (ReLU)"}
LABELS["favor_softmax"] = "Performer (softmax)"


class ElapsedTime(pl.Callback):
    """Logs ``time/seconds`` since training started with every validation during fit, and
    keeps the final (steps, seconds) of the run."""

    def __init__(self):
        self.start: float | None = None
        self.seconds = 0.0
        self.steps = 0

    def on_train_start(self, trainer, pl_module):
        self.start = time.monotonic()

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.start is not None and not trainer.sanity_checking and trainer.training is False:
            if trainer.state.fn == "fit":
                pl_module.log("time/seconds", time.monotonic() - self.start)

    def on_train_end(self, trainer, pl_module):
        if self.start is not None:
            self.seconds = time.monotonic() - self.start
        self.steps = int(trainer.global_step)


def max_time(minutes: float) -> str:
    """Lightning's DD:HH:MM:SS for a budget in (fractional) minutes, at least a second."""
    seconds = max(1, round(minutes * 60))
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:" + (
        f"{seconds % 60:02d}"
    )


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from proteinperf.train import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def run_overrides(name: str, args, work: Path) -> list[str]:
    objective, attention = RUNS[name]
    out = [
        f"experiment={'reproduce_gpu' if args.preset == 'gpu' else 'reproduce'}",
        f"paths.log_dir={work}",
        f"paths.output_dir={work / name}",
        f"model.objective={objective}",
        f"model.causal={str(objective == 'clm').lower()}",
        f"model.attention={attention}",
        f"trainer.max_time='{max_time(args.budget)}'",
    ]
    if args.corpus:
        out.append(f"data.data_path={Path(args.corpus).resolve()}")
        if Path(args.corpus).resolve() != (resources.data_dir() / "swissprot_20k.fasta.gz"):
            out.append("data.clusters_file=null")  # a corpus dir is split already
    return [*out, *args.overrides]


def read_curve(csv_path: Path) -> list[dict]:
    """[{step, seconds, accuracy, perplexity}] of the validations logged during training."""
    if not csv_path.is_file():
        return []
    by_step: dict[int, dict] = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            merged = by_step.setdefault(int(row["step"]), {})
            merged.update({k: v for k, v in row.items() if v not in ("", None)})
    curve = []
    for step, row in sorted(by_step.items()):
        if "val/acc" in row and "time/seconds" in row:
            curve.append(
                {
                    "step": step,
                    "seconds": float(row["time/seconds"]),
                    "accuracy": float(row["val/acc"]),
                    "perplexity": float(row["val/ppl"]),
                }
            )
    return curve


def _metrics(result: dict) -> dict:
    keys = ("accuracy", "perplexity", "loss")
    return {k: result[k] for k in keys} | {"sequences": result["sequences"]}


def device_name(device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)``, or ``cpu``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def train_and_evaluate(name: str, args, work: Path) -> tuple[dict, object, dict]:
    """(run entry of reproduce.json, trained PerformerLM, context) for one of RUNS."""
    from proteinperf.inference.evaluate import evaluate
    from proteinperf.train import train

    cfg = compose(run_overrides(name, args, work))
    print(f"[reproduce] {name}: training for {args.budget} min ({max_time(args.budget)})")
    result = train(cfg)
    trainer, module = result["trainer"], result["module"]
    timer = next(c for c in trainer.callbacks if isinstance(c, ElapsedTime))
    corpus = trainer.datamodule.corpus_path
    # Lightning hands the module back on the CPU: evaluate where it trained.
    device = trainer.strategy.root_device
    model = module.model.to(device).eval()
    unigram = module.unigram_log_probs.cpu()
    options = dict(max_length=int(cfg.data.max_length), unigram_log_probs=unigram)
    print(f"[reproduce] {name}: {timer.steps} steps in {timer.seconds:.0f} s; evaluating")
    test = evaluate(model, corpus, split="test", **options)
    objective, attention = RUNS[name]
    entry = {
        "name": name,
        "objective": objective,
        "attention": attention,
        "steps": timer.steps,
        "seconds": round(timer.seconds, 1),
        "device": device_name(device),
        "test": _metrics(test),
        "test_unigram": test.get("unigram"),
    }
    if args.far:
        far = evaluate(model, args.far, **options)
        entry["far"], entry["far_unigram"] = _metrics(far), far.get("unigram")
    entry["parameters"] = sum(p.numel() for p in model.parameters())
    entry["checkpoint"] = result["checkpoint"]
    entry["_unigram"] = unigram.tolist()  # for the export; not written to reproduce.json
    entry["curve"] = read_curve(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")
    context = {"corpus": corpus, "max_length": int(cfg.data.max_length), "cfg": cfg}
    return entry, model, context


def similarity(model, corpus, args, max_length: int) -> tuple[dict, dict, dict]:
    """The BLOSUM62 study on the first --analysis-seqs proteins of the test split, and the
    amino-acid similarity study (embeddings, substitutions, the same attention study)."""
    from proteinperf.analysis.blosum_study import blosum_study
    from proteinperf.analysis.similarity_study import similarity_study
    from proteinperf.data.alphabet import get_alphabet
    from proteinperf.data.corpus import ProteinCorpus

    test = ProteinCorpus(corpus, "test")
    sequences = [test.sequence(i) for i in range(min(len(test), args.analysis_seqs))]
    print(f"[reproduce] BLOSUM62 studies on {len(sequences)} held-out proteins")
    options = dict(n_resamples=args.bootstrap, seed=args.seed, max_length=max_length)
    study, matrices = blosum_study(
        model,
        sequences,
        get_alphabet(),
        return_matrices=True,
        untrained_seeds=args.untrained_seeds,
        **options,
    )
    measures, _ = similarity_study(
        model,
        sequences,
        get_alphabet(),
        untrained_seeds=args.untrained_seeds,
        attention_study=(study, matrices),
        **options,
    )
    return study, matrices, measures


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(report: dict) -> str:
    """Markdown laid out like the paper's Table 2 (+ steps, seconds and the far set)."""
    from proteinperf.analysis.similarity import r_text
    from proteinperf.analysis.similarity_study import MEASURES

    lines = [
        "| Model type | Model | Accuracy | Perplexity | Steps | Seconds | Far: accuracy "
        "| Far: perplexity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        kind = "BID" if run["objective"] == "mlm" else "UNI"
        far = run.get("far") or {}
        lines.append(
            f"| {kind} | {LABELS[run['attention']]} | {_fmt(run['test']['accuracy'], 3)} | "
            f"{_fmt(run['test']['perplexity'], 2)} | {run['steps']} | {run['seconds']:.0f} | "
            f"{_fmt(far.get('accuracy'), 3)} | {_fmt(far.get('perplexity'), 2)} |"
        )
    for key, label in (("unigram", "masked"), ("unigram_causal", "next-token")):
        u = report.get(key)
        if u:
            far = report.get(f"far_{key}") or {}
            lines.append(
                f"| — | Empirical baseline (unigram, {label} targets) | {_fmt(u['accuracy'], 3)} "
                f"| {_fmt(u['perplexity'], 2)} | | | {_fmt(far.get('accuracy'), 3)} "
                f"| {_fmt(far.get('perplexity'), 2)} |"
            )
    s = report.get("similarity")
    notes = [
        "",
        f"Budget: {report['budget_minutes']} min of training per model ({report['preset']} "
        f"preset); test: the corpus's held-out split ({report['corpus']}); far: {report['far']}.",
        f"Trained, evaluated and analysed on {report.get('device', 'an unrecorded device')}.",
    ]
    if s:
        notes.append(
            f"BLOSUM62 (Vig et al. statistic, {s['n_sequences']} held-out proteins, best "
            f"bidirectional model {s['analysed_run']}): r = {r_text(s['model'])}; untrained "
            f"control {r_text(s['untrained'])}; shuffled residues {r_text(s['shuffled'])}; "
            f"signal claimed: {'yes' if s['signal'] else 'no'}."
        )
    measures = report.get("amino_acid_similarity") or {}
    for name in MEASURES:
        block = measures.get(name)
        if block:
            notes.append(
                f"Amino-acid similarity from {name}: r = {r_text(block)}; controls: "
                + "; ".join(f"{k} {r_text(v)}" for k, v in block["controls"].items())
                + f"; signal claimed: {'yes' if block['signal'] else 'no'}."
            )
    return "\n".join(lines + notes) + "\n"


OBJECTIVES = {"mlm": "masked-residue", "clm": "next-token"}


def curves_figure(runs: list[dict], unigram: dict | None = None):
    """Validation accuracy during training: masked-residue (BID) and next-token (UNI) runs on
    separate rows, as the two accuracies measure different tasks; each row with its unigram
    baseline (``unigram``: objective -> {"accuracy": ...} on the test split), against
    wall-clock seconds (the shared budget) and optimizer steps."""
    from matplotlib.figure import Figure

    objectives = [o for o in OBJECTIVES if any(r["objective"] == o for r in runs)]
    fig = Figure(figsize=(10, 3.4 * len(objectives) + 0.4), layout="constrained")
    axes = fig.subplots(len(objectives), 2, squeeze=False)
    for row, objective in zip(axes, objectives):
        for run in (r for r in runs if r["objective"] == objective):
            curve = run.get("curve") or []
            kind = "BID" if objective == "mlm" else "UNI"
            for ax, key in zip(row, ("seconds", "step")):
                x, y = [c[key] for c in curve], [c["accuracy"] for c in curve]
                ax.plot(x, y, "-", marker=".", label=f"{kind} {LABELS[run['attention']]}")
        baseline = ((unigram or {}).get(objective) or {}).get("accuracy")
        for ax, xlabel in zip(row, ("training seconds (wall-clock)", "optimizer steps")):
            if baseline is not None:
                ax.axhline(baseline, color="grey", ls="-.", lw=1, label="unigram (test split)")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{OBJECTIVES[objective]} accuracy\n(validation)")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle("learning curves: same budget, size, data order and optimiser")
    return fig


def export_models(report: dict, models: dict, out_dir: Path) -> list[dict]:
    """Best bidirectional and best causal run as named models (fp16, <= 15 MB) in out_dir."""
    from proteinperf.checkpoint import save_model
    from proteinperf.pretrained.export import export_model

    exported = []
    for objective, suffix in (("mlm", "bid"), ("clm", "causal")):
        runs = [r for r in report["runs"] if r["objective"] == objective]
        if not runs:
            continue
        best = max(runs, key=lambda r: r["test"]["accuracy"])
        family = "transformer" if best["attention"] == "softmax" else "performer"
        name = f"swissprot-{family}-{suffix}"
        card = {
            k: best.get(k) for k in ("objective", "attention", "steps", "seconds", "test", "far")
        }
        card.update(
            data=report["corpus"],
            split="the corpus's train split (clusters at the corpus's identity; see data/README)",
            unigram=report.get("unigram" if objective == "mlm" else "unigram_causal"),
            description=f"{LABELS[best['attention']]}, {objective}, from `make reproduce` "
            f"({report['preset']} preset, {report['budget_minutes']} min)",
        )
        with tempfile.TemporaryDirectory() as tmp:
            source = save_model(
                Path(tmp) / "model.pt",
                models[best["name"]],
                extra={"objective": objective, "unigram_log_probs": best["_unigram"]},
            )
            try:
                path = export_model(source, out_dir / f"{name}.pt", card)
                exported.append({"name": name, "run": best["name"], "path": str(path)})
            except ValueError as err:  # too large to ship
                exported.append({"name": name, "run": best["name"], "error": str(err)})
    return exported


def reproduce(args) -> dict:

    from proteinperf.analysis import plots
    from proteinperf.analysis.blosum_study import json_safe, write_figures

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    names = args.runs or list(RUNS)
    runs, models, contexts = [], {}, {}
    for name in names:
        entry, model, context = train_and_evaluate(name, args, work)
        runs.append(entry)
        models[name], contexts[name] = model, context
    report = {
        "budget_minutes": args.budget,
        "preset": args.preset,
        "corpus": str(args.corpus or contexts[names[0]]["cfg"].data.data_path),
        "far": str(args.far) if args.far else None,
        "runs": runs,
        # Where the models trained, were evaluated and the BLOSUM62 study ran (the same).
        "device": ", ".join(dict.fromkeys(run["device"] for run in runs)),
        "load_average": list(os.getloadavg()),
    }
    for run in runs:
        key = "unigram" if run["objective"] == "mlm" else "unigram_causal"
        for prefix, field in (("", "test_unigram"), ("far_", "far_unigram")):
            if run.get(field) and prefix + key not in report:
                report[prefix + key] = {k: run[field][k] for k in ("accuracy", "perplexity")}
    bidirectional = [r for r in runs if r["objective"] == "mlm"]
    if bidirectional and args.bootstrap > 0:
        best = max(bidirectional, key=lambda r: r["test"]["accuracy"])
        context = contexts[best["name"]]
        study, matrices, measures = similarity(
            models[best["name"]], context["corpus"], args, args.max_length
        )
        study["analysed_run"] = best["name"]
        report["similarity"] = study
        report["amino_acid_similarity"] = {"analysed_run": best["name"], **measures}
        write_figures(study, matrices, out, prefix="reproduce_similarity")
    unigram = {"mlm": report.get("unigram"), "clm": report.get("unigram_causal")}
    plots.save_figure(curves_figure(runs, unigram), out / "reproduce_curves.png")
    if args.export_dir:
        report["exported"] = export_models(report, models, Path(args.export_dir))
    for run in runs:
        run.pop("_unigram", None)
    write_text_atomic(out / "reproduce.json", json.dumps(json_safe(report), indent=2) + "\n")
    write_text_atomic(out / "reproduce.md", table(report))
    print(table(report))
    return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proteinperf.reproduce", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--budget", type=float, default=5.0, help="training minutes per model (default 5)"
    )
    parser.add_argument(
        "--corpus",
        help="prepared corpus dir or FASTA (default: the experiment's data, the 20k Swiss-Prot "
        "set with its 50%% clusters)",
    )
    parser.add_argument(
        "--far",
        default=str(DEFAULT_FAR),
        help="FASTA far from training, evaluated too ('' to skip; default %(default)s)",
    )
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), help="a subset of the runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--work", default=str(ROOT / "outputs" / "reproduce"))
    parser.add_argument(
        "--export-dir",
        help="also write the best bidirectional and causal model as named models here "
        "(copy to proteinperf/pretrained/ to ship them)",
    )
    parser.add_argument("--bootstrap", type=int, default=200, help="0: no BLOSUM62 study")
    parser.add_argument("--analysis-seqs", type=int, default=200, help="held-out proteins")
    parser.add_argument(
        "--max-length", type=int, default=1024, help="residues analysed per protein"
    )
    parser.add_argument(
        "--untrained-seeds", type=int, default=3, help="untrained controls of the BLOSUM62 studies"
    )
    parser.add_argument("--seed", type=int, default=0, help="controls and bootstrap seed")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    args.far = args.far or None
    if not args.budget > 0 or not math.isfinite(args.budget):
        parser.error(f"--budget must be a positive number of minutes, got {args.budget}")
    return args


def main(argv=None) -> int:
    reproduce(parse_args(argv))
    return 0


if __name__ == "__main__":
    # Through the importable module, so that ElapsedTime instantiated by Hydra from
    # proteinperf.reproduce is the class this code looks for (not __main__'s copy).
    from proteinperf.reproduce import main as _main

    sys.exit(_main())
