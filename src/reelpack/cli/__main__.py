"""``python -m reelpack.cli``: the command line."""

from reelpack.cli import main

main()
