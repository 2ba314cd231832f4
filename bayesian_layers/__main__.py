"""``python -m bayesian_layers``: the ``bayesian-layers`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
