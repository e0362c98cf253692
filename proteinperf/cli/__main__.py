import sys

from proteinperf.cli import main

sys.exit(main())
