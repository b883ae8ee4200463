"""`python -m node.bench`: the bench (or, with --client, its load generator)."""

import sys

from node.bench.cli import main

sys.exit(main())
