"""`python -m rlhf.compare <multirun folder>`: the entry point of rlhf/sweeps/compare.py."""

import sys

from rlhf.sweeps.compare import main

if __name__ == "__main__":
    sys.exit(main())
