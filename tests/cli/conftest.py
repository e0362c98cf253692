import pytest
from helpers import tiny_model

from proteinperf.checkpoint import save_model


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """Tiny checkpoints and good and bad input files, keyed by name: {name: path string}."""
    folder = tmp_path_factory.mktemp("cli_inputs")
    paths = {
        "bid": save_model(folder / "bid.pt", tiny_model("favor_relu")),
        "causal": save_model(folder / "causal.pt", tiny_model("favor_relu", causal=True)),
    }
    files = {  # key: (file name, content)
        "good": ("good.fa", ">a\nMKTAYIAKQR\n>b\nMADEF\n"),
        "bad": ("bad.fa", ">a\nMKTAYIAKQR\n>b\nMA1DEF\n"),
        "empty": ("empty.fa", ""),
        "badint": ("badint.fa", ">a n=1\nMKV\n>b n=x\nMKV\n"),
        "junk": ("junk.pt", "not a checkpoint"),
        "muts": ("muts.csv", "mutant\nM1A\n"),
        "badmuts": ("badmuts.csv", "mutant\nM1A\nX2A\n"),
        "emptycsv": ("empty.csv", ""),
        "notes": ("notes.txt", "mine"),
    }
    for key, (name, text) in files.items():
        (folder / name).write_text(text)
        paths[key] = folder / name
    (folder / "full").mkdir()
    (folder / "full" / "thesis.tex").write_text("mine")
    paths["full"], paths["missing"] = folder / "full", folder / "missing"
    (folder / "badcorpus").mkdir()
    (folder / "badcorpus" / "manifest.json").write_text('{"format_version": ')  # cut short
    paths["badcorpus"] = folder / "badcorpus"
    return {name: str(path) for name, path in paths.items()}
