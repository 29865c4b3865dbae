"""Developer entry for the benchmarks: ``python benchmarks/run.py [mixpro bench options]``
(the same as ``mixpro bench ...``, one-line errors included)."""

import sys

from mixpro.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
