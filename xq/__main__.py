"""`python -m xq ...`: the same command line as `xq ...` (for an environment whose scripts are not on PATH)."""

from .cli import main

main()
