"""Build hook: the wheel carries the Hydra config tree and the shipped data files.

conf/ and data/ at the top of the checkout stay the files people edit and `make train` reads.
Building a wheel copies them into the package (proteinperf/_conf, proteinperf/_data), where
proteinperf.resources finds them when the package is not inside a checkout. An editable install
reads them in place. All other build settings are in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What conf/ refers to (the default corpus and its clusters, the 866-protein sample) and what
# the benchmarks and `make reproduce` read (the far set), with their provenance.
DATA_FILES = (
    "README.md",
    "sample_proteins.fasta",
    "swissprot_20k.fasta.gz",
    "swissprot_20k.clusters50.tsv.gz",
    "far_proteins.fasta.gz",
    "far_proteins_486k.fasta.gz",
)


class BuildWithResources(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        package = Path(self.build_lib) / "proteinperf"
        shutil.rmtree(package / "_conf", ignore_errors=True)
        shutil.copytree(ROOT / "conf", package / "_conf", ignore=shutil.ignore_patterns(".*"))
        (package / "_data").mkdir(exist_ok=True)
        for name in DATA_FILES:
            shutil.copy2(ROOT / "data" / name, package / "_data" / name)


setup(cmdclass={"build_py": BuildWithResources})
