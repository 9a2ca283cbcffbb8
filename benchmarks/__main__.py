"""`python -m benchmarks`: see benchmarks/cli.py and README.md's Benchmark section."""
import sys

from .cli import main

sys.exit(main())
