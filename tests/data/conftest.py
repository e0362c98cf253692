"""tests/data: shared fixtures are in tests/conftest.py, helpers in tests/helpers.py.

test_data_fasta.py and test_data_prepare.py still import SAMPLE and write from here.
"""

from helpers import SAMPLE, write  # noqa: F401
