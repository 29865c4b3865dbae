"""Developer entry for the benchmarks: ``python benchmarks/run.py [mixpro bench options]``."""

import sys

from mixpro.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
