"""`python -m gate` runs the `gate` command."""

import sys

from gate.cli import main

sys.exit(main())
