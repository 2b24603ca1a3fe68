"""`python -m echochamber ...`: the console command without its entry-point script (e.g. on a
machine where the package is on PYTHONPATH rather than installed)."""

import sys

from echochamber.cli import main

sys.exit(main())
